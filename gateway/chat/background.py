"""What the web app asks for after a reply (`background_tasks` of its turn): a
title the model writes, tags, and follow-up questions — as Open WebUI's own
tasks do, each one short model call after the reply is stored::

    title_generation      the chat still has no title of its own → the model's
                          title (or the question's first words when the model
                          gives none) → stored, event `chat:title` <title>
    tags_generation       → up to 3 tags added to the chat, event `chat:tags` [names]
    follow_up_generation  → stored on the reply as `followUps`, event
                          `chat:message:follow_ups` {"follow_ups": [questions]}

Each task asks for a JSON object and reads the text between its first `{`
and last `}` (models wrap JSON in prose or code fences); a task that fails
changes nothing but the title's fallback.  They run in a bounded set of
tasks after the reply ended: a slow model server delays them, never the reply.
The prompts are the gateway's own; the first line of each names its task
(`Task: title`), so a test double or a router can tell them apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from gateway import rooms
from gateway.chat import tree
from gateway.chat.chats import DEFAULT_TITLES, TITLE_CHARS, now_s, shaped_history
from gateway.edge.connections import EveryInterval
from gateway.errors import GatewayError, RateLimited
from gateway.events import MessageEvent
from gateway.fanout.hub import Hub
from gateway.store import ChatStore
from gateway.upstream.router import ModelRouter

log = logging.getLogger(__name__)

TASKS = ("title_generation", "tags_generation", "follow_up_generation")
# Background tasks running at once on this replica; past it, new ones wait.
MAX_RUNNING = 8
# Running or waiting: at most this many of one user's (one turn's tasks are one),
# and this many in all; past either, a finished reply's tasks are skipped (logged)
# and an asked title is refused, 429: one user's slow model cannot hold everyone's
# titles behind the 8 running, and the waiting are not an unbounded set of tasks.
MAX_PER_USER = 4
MAX_QUEUED = 256
# Seconds a task's model call may take before it is given up.
TASK_TIMEOUT_S = 60.0
MAX_TAGS = 3
MAX_FOLLOW_UPS = 5
# How much of the conversation a task prompt quotes (the end of it).
CONVERSATION_CHARS = 4000

PROMPTS = {
    "title_generation": (
        "Task: title\n"
        "Write a title of 3 to 5 words, with one fitting emoji first, for the chat below, "
        "in the chat's language. Answer with JSON only: "
        '{{"title": "<the title>"}}\n\n{conversation}'
    ),
    "tags_generation": (
        "Task: tags\n"
        f"Give 1 to {MAX_TAGS} broad tags (one or two words each) for the subject of the chat "
        'below, in the chat\'s language. Answer with JSON only: {{"tags": ["<tag>", ...]}}\n\n'
        "{conversation}"
    ),
    "follow_up_generation": (
        "Task: follow-ups\n"
        f"Suggest 3 to {MAX_FOLLOW_UPS} short questions the user might ask next, as they would "
        "write them, in the chat's language. Answer with JSON only: "
        '{{"follow_ups": ["<question>", ...]}}\n\n{conversation}'
    ),
}

# Reasoning blocks and images are not what a chat is about.
_NOISE = re.compile(r"<details\b[^>]*>.*?</details>|!\[.*?\]\(.*?\)", re.S | re.I)


def conversation_text(path: Sequence[dict[str, Any]]) -> str:
    lines = []
    for message in path:
        content = message.get("content")
        if isinstance(content, str) and message.get("role") in ("user", "assistant"):
            text = _NOISE.sub("", content).strip()
            if text:
                lines.append(f"{message['role'].upper()}: {text}")
    return "\n".join(lines)[-CONVERSATION_CHARS:]


def json_answer(text: str) -> dict[str, Any]:
    """The JSON object in a model's answer, or {} when there is none."""
    try:
        value = json.loads(text[text.find("{") : text.rfind("}") + 1])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def strings(value: Any, limit: int, chars: int) -> list[str]:
    if not isinstance(value, list):
        return []
    kept = [" ".join(item.split())[:chars] for item in value if isinstance(item, str)]
    return [item for item in kept if item][:limit]


def _failed(task: str, exc: Exception) -> None:
    """A task's failure, in the log: one line when the model server or the request
    is at fault (the message says which), a traceback only for a fault of ours."""
    if isinstance(exc, GatewayError | TimeoutError):
        log.warning(
            "background task failed: %s", str(exc) or type(exc).__name__, extra={"task": task}
        )
    else:
        log.warning("background task failed", extra={"task": task}, exc_info=exc)


class Background:
    def __init__(
        self, router: ModelRouter, store: ChatStore, hub: Hub, task_model: str = ""
    ) -> None:
        self._router = router
        self._store = store
        self._hub = hub
        self._task_model = task_model
        self._slots = asyncio.Semaphore(MAX_RUNNING)
        self._running: set[asyncio.Task[None]] = set()
        self._by_user: dict[str, int] = {}  # running or waiting, per user
        self._queued = 0
        self._skipped = EveryInterval()

    def _full(self, user_id: str) -> bool:
        return self._queued >= MAX_QUEUED or self._by_user.get(user_id, 0) >= MAX_PER_USER

    def _take(self, user_id: str) -> None:
        """One more of the user's running or waiting: counted when it is made, so a
        burst of them in one loop turn cannot all pass `_full` (`_give` when done)."""
        self._queued += 1
        self._by_user[user_id] = self._by_user.get(user_id, 0) + 1

    def _give(self, user_id: str) -> None:
        self._queued -= 1
        left = self._by_user[user_id] - 1
        if left:
            self._by_user[user_id] = left
        else:
            del self._by_user[user_id]

    def after_reply(
        self, chat_id: str, message_id: str, user_id: str, model: str, tasks: Iterable[str]
    ) -> None:
        """Run the turn's tasks for a finished reply, in the background (skipped past
        MAX_PER_USER or MAX_QUEUED: the title then stays the question's first words)."""
        wanted = [name for name in TASKS if name in set(tasks)]
        if not wanted:
            return
        if self._full(user_id):
            self._skipped.note("background tasks skipped: too many waiting (%d)", self._queued)
            return
        self._take(user_id)
        task = asyncio.create_task(self._run(chat_id, message_id, user_id, model, wanted))
        self._running.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._running.discard(task)
            self._give(user_id)

        task.add_done_callback(done)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(
        self, chat_id: str, message_id: str, user_id: str, model: str, tasks: list[str]
    ) -> None:
        async with self._slots:
            chat = await self._store.get_chat(chat_id)
            if chat is None:
                return
            history = await shaped_history(chat, await self._store.get_messages(chat_id))
            path = tree.path_to(history, message_id)
            text = conversation_text(path)
            for name in tasks:
                try:
                    answer = await asyncio.wait_for(
                        self._ask(self._task_model or model, name, text), TASK_TIMEOUT_S
                    )
                except Exception as exc:
                    # A task is a nicety: its failure is logged, never the reply's.
                    _failed(name, exc)
                    answer = {}
                await self._apply(name, answer, chat_id, message_id, user_id, path)

    async def title(self, user_id: str, model: str, messages: Sequence[Any]) -> str:
        """A title for a conversation, asked for (the web app's rename › generate):
        the model's, as a finished reply's is made; its first question's words when
        the model gives none.  Past MAX_PER_USER of the user's or MAX_QUEUED in all,
        `RateLimited` (429)."""
        if self._full(user_id):
            raise RateLimited("Too many titles and background tasks at once; try again shortly")
        path = [message for message in messages if isinstance(message, dict)]
        self._take(user_id)
        try:
            return await self._title_now(model, path)
        finally:
            self._give(user_id)

    async def _title_now(self, model: str, path: list[dict[str, Any]]) -> str:
        async with self._slots:
            try:
                answer = await asyncio.wait_for(
                    self._ask(
                        self._task_model or model, "title_generation", conversation_text(path)
                    ),
                    TASK_TIMEOUT_S,
                )
            except Exception as exc:
                _failed("title_generation", exc)
                answer = {}
        title = answer.get("title")
        text = " ".join(title.split()) if isinstance(title, str) else ""
        if not text:
            first = next((m.get("content") for m in path if m.get("role") == "user"), "")
            text = " ".join(first.split()) if isinstance(first, str) else ""
        return text[:TITLE_CHARS]

    async def _ask(self, model: str, name: str, conversation: str) -> dict[str, Any]:
        upstream = await self._router.resolve(model)
        prompt = PROMPTS[name].format(conversation=conversation)
        stream = await upstream.open(model, [{"role": "user", "content": prompt}], {})
        parts: list[str] = []
        try:
            async for chunk in stream:
                parts.append(chunk.text or chunk.reasoning)
        finally:
            await stream.aclose()
        return json_answer("".join(parts))

    async def _apply(
        self,
        name: str,
        answer: dict[str, Any],
        chat_id: str,
        message_id: str,
        user_id: str,
        path: list[dict[str, Any]],
    ) -> None:
        if name == "title_generation":
            title = answer.get("title")
            fallback = next((m.get("content") for m in path if m.get("role") == "user"), "")
            await self._title(chat_id, message_id, user_id, title, str(fallback or ""))
        elif name == "tags_generation":
            tags = strings(answer.get("tags"), MAX_TAGS, 40)
            # A chat deleted meanwhile gets no tags, and its tabs no event of it
            # (the web app would fetch the chat again, and find none).
            if tags and await self._store.get_chat(chat_id) is not None:
                for tag in tags:
                    await self._store.add_tag(user_id, chat_id, tag)
                self._emit(chat_id, message_id, user_id, "chat:tags", tags)
        elif name == "follow_up_generation":
            follow_ups = strings(answer.get("follow_ups"), MAX_FOLLOW_UPS, 300)
            if follow_ups and await self._follow_ups(chat_id, message_id, follow_ups):
                self._emit(
                    chat_id,
                    message_id,
                    user_id,
                    "chat:message:follow_ups",
                    {"follow_ups": follow_ups},
                )

    async def _title(
        self, chat_id: str, message_id: str, user_id: str, title: Any, fallback: str
    ) -> None:
        chat = await self._store.get_chat(chat_id)
        # Only a chat without a title of its own: a rename meanwhile wins.
        if chat is None or chat.title not in DEFAULT_TITLES:
            return
        text = " ".join(title.split()) if isinstance(title, str) else ""
        text = text or " ".join(fallback.split())
        if not text:
            return
        chat.title = text[:TITLE_CHARS]
        chat.updated_at = now_s()
        await self._store.change_chat(chat, "title", "updated_at")
        self._emit(chat_id, message_id, user_id, "chat:title", chat.title)

    async def _follow_ups(self, chat_id: str, message_id: str, follow_ups: list[str]) -> bool:
        """Stored with the reply; False when it is gone (its chat deleted meanwhile)."""
        record = await self._store.get_message(chat_id, message_id)
        if record is None:
            return False
        record.fields = {**record.fields, "followUps": follow_ups}
        await self._store.update_message(record)
        return True

    def _emit(self, chat_id: str, message_id: str, user_id: str, kind: str, data: Any) -> None:
        event = MessageEvent(chat_id, message_id, 0, kind, data)
        self._hub.publish([rooms.user(user_id), rooms.chat(chat_id)], event)
