"""The chat service: runs replies.  `generate` is the only writer of replies.

A stored reply goes through three states, each one row write at most::

    placeholder  {content: "", done: false}            written before streaming
    streaming    draft column checkpointed ~once a second (content untouched,
                 so a poller never mistakes half a reply for a whole one)
    finished     {content: <all>, done: true, usage, ...}  one write at the end
                 (or the partial text with an `error` note, or `cancelled`)

Events go to the hub rooms `user:<owner>`, `chat:<id>` and `reply:<message
id>`; `ReplyFinished` is published only after the row is written, so a
client that reloads on it sees the final text.  A reply runs in its own
task: a client that disconnects does not stop it (it lands in the chat), a
stop request does.  On start-up, replies left unfinished by a crash are
finalised with their last draft and an `error` note.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Principal
from gateway.chat import tree
from gateway.chat.chats import DEFAULT_TITLE, ChatBook, now_s
from gateway.chat.reply import reply_events
from gateway.chat.shapes import history_of, message_record
from gateway.commands import Ask
from gateway.errors import BadRequest, GatewayError
from gateway.events import (
    ChatTitleChanged,
    Event,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.hub import Hub, Outbox
from gateway.store import Store
from gateway.store.records import ChatRecord, MessageRecord
from gateway.upstream.router import ModelRouter

log = logging.getLogger(__name__)

CRASH_NOTE = (
    "The gateway stopped before this reply finished; the text up to the last checkpoint is kept."
)
TITLE_CHARS = 60


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(message.get("content") or "")) for message in messages)


def reply_rooms(user_id: str, chat_id: str, message_id: str) -> list[str]:
    return [f"user:{user_id}", f"chat:{chat_id}", f"reply:{message_id}"]


@dataclass(slots=True)
class Running:
    """A reply in progress, for stop requests and task lists."""

    chat_id: str
    message_id: str
    user_id: str
    task: asyncio.Task[None] | None = None
    cancelled_by_user: bool = False


@dataclass(slots=True)
class StartedReply:
    chat_id: str
    message_id: str
    outbox: Outbox
    repaired: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ChatService:
    def __init__(
        self,
        router: ModelRouter,
        store: Store,
        hub: Hub,
        checkpoint_interval_s: float = 1.0,
    ) -> None:
        self.router = router
        self.store = store
        self.hub = hub
        self.book = ChatBook(store, lambda message_id: message_id in self.running)
        self._checkpoint_interval_s = checkpoint_interval_s
        self.running: dict[str, Running] = {}

    # -- pure API mode -------------------------------------------------------
    async def open_reply(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Nothing stored; the caller consumes the events (and closing them stops the upstream).

        Raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error.
        """
        upstream = await self.router.resolve(ask.model)
        stream = await upstream.open(ask.model, ask.messages, ask.params)
        return reply_events(
            stream,
            chat_id=None,
            message_id=f"chatcmpl-{uuid.uuid4().hex}",
            user_id=principal.user_id,
            parent_id=None,
            model=ask.model,
            prompt_chars=_prompt_chars(ask.messages),
        )

    # -- stored replies ------------------------------------------------------
    async def start_reply(
        self, principal: Principal, chat_id: str, message_id: str, ask: Ask
    ) -> StartedReply:
        """Answer into `history.messages[message_id]` of an existing chat.

        The placeholder is created under the last user message when it is
        missing (reported in `repaired`).  The chat and placeholder are
        written before this returns; the reply then streams in its own task.
        """
        chat = await self.book.owned(principal, chat_id)
        history = history_of(chat, await self.store.get_messages(chat.id))
        messages = history["messages"]
        repaired = None
        if message_id in messages:
            existing = messages[message_id]
            if existing.get("role") != "assistant":
                role = existing.get("role")
                raise BadRequest(
                    f"message '{message_id}' is a {role} message, not an assistant one"
                )
            placeholder = {**existing, "content": "", "done": False, "model": ask.model}
        else:
            parent = tree.last_user_message_id(history)
            if parent is None:
                raise BadRequest("The chat has no user message to answer")
            placeholder = {
                "id": message_id,
                "parentId": parent,
                "role": "assistant",
                "content": "",
                "done": False,
                "model": ask.model,
                "timestamp": now_s(),
            }
            repaired = f"created assistant placeholder {message_id} under user message {parent}"
        placeholder.pop("error", None)
        parent_id = placeholder.get("parentId")
        path = (
            tree.path_to(history, parent_id)
            if isinstance(parent_id, str) and parent_id in messages
            else []
        )
        conversation = self._conversation(path, ask.messages)
        return await self._launch(principal, chat, placeholder, conversation, ask, repaired)

    def _conversation(
        self, path: list[dict[str, Any]], requested: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """What the model sees: the path root → user message, and the request's system prompt."""
        turns = [
            {"role": m.get("role"), "content": m.get("content") or ""}
            for m in path
            if m.get("role") in ("system", "user", "assistant")
        ]
        if not any(t["role"] == "user" for t in turns):
            return list(requested)
        if not any(t["role"] == "system" for t in turns):
            systems = [dict(m) for m in requested if m.get("role") == "system"]
            turns = systems + turns
        return turns

    async def _launch(
        self,
        principal: Principal,
        chat: ChatRecord,
        placeholder: dict[str, Any],
        conversation: list[dict[str, Any]],
        ask: Ask,
        repaired: str | None,
    ) -> StartedReply:
        record = message_record(chat.id, placeholder)
        chat.current_id = record.id
        chat.updated_at = now_s()
        await self.store.save_chat(chat, [record])
        outbox = self.hub.subscribe([f"reply:{record.id}"])
        running = Running(chat.id, record.id, chat.user_id)
        self.running[record.id] = running
        try:
            upstream = await self.router.resolve(ask.model)
            stream = await upstream.open(ask.model, conversation, ask.params)
        except GatewayError as exc:
            self.running.pop(record.id, None)
            self.hub.unsubscribe(outbox)
            await self._finish(chat, record, "", error=exc.message)
            raise
        events = reply_events(
            stream,
            chat_id=chat.id,
            message_id=record.id,
            user_id=chat.user_id,
            parent_id=record.parent_id,
            model=ask.model,
            prompt_chars=_prompt_chars(conversation),
        )
        running.task = asyncio.create_task(self.generate(chat, record, events, running))
        return StartedReply(chat.id, record.id, outbox, repaired)

    async def generate(
        self,
        chat: ChatRecord,
        record: MessageRecord,
        events: AsyncGenerator[Event, None],
        running: Running,
    ) -> None:
        rooms = reply_rooms(chat.user_id, chat.id, record.id)
        parts: list[str] = []
        last_checkpoint = time.monotonic()
        checkpoint: asyncio.Task[None] | None = None
        started = time.monotonic()
        seq = 0
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    seq = event.seq if isinstance(event, ReplyStarted | TextDelta) else seq
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                        now = time.monotonic()
                        if now - last_checkpoint >= self._checkpoint_interval_s and (
                            checkpoint is None or checkpoint.done()
                        ):
                            last_checkpoint = now
                            checkpoint = asyncio.create_task(
                                self.store.checkpoint_draft(chat.id, record.id, "".join(parts))
                            )
                    if isinstance(event, ReplyFinished):
                        title = await self._finish(chat, record, event.content, usage=event.usage)
                        self.hub.publish(rooms, _with_title(event, title))
                        if title is not None:
                            self.hub.publish(
                                rooms, ChatTitleChanged(chat.id, record.id, event.seq + 1, title)
                            )
                    elif isinstance(event, ReplyFailed):
                        await self._finish(chat, record, event.partial_content, error=event.message)
                        self.hub.publish(rooms, event)
                    else:
                        self.hub.publish(rooms, event)
        except asyncio.CancelledError:
            # A stop request (or shutdown): keep what was streamed, end cleanly.
            content = "".join(parts)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(chat, record, content, cancelled=True))
            usage = Usage(0, (len(content) + 3) // 4, estimated=True)
            self.hub.publish(
                rooms,
                ReplyFinished(
                    chat.id,
                    record.id,
                    seq + 1,
                    content,
                    usage,
                    "cancelled",
                    time.monotonic() - started,
                    cancelled=True,
                ),
            )
            if not running.cancelled_by_user:
                raise
        except Exception:
            log.exception("reply failed", extra={"chat_id": chat.id, "message_id": record.id})
            content = "".join(parts)
            with contextlib.suppress(Exception):
                await self._finish(chat, record, content, error="Internal error")
            self.hub.publish(
                rooms,
                ReplyFailed(
                    chat.id, record.id, seq + 1, "internal_error", "Internal error", content
                ),
            )
        finally:
            if checkpoint is not None and not checkpoint.done():
                checkpoint.cancel()
            self.running.pop(record.id, None)

    async def _finish(
        self,
        chat: ChatRecord,
        record: MessageRecord,
        content: str,
        *,
        usage: Usage | None = None,
        error: str | None = None,
        cancelled: bool = False,
    ) -> str | None:
        """Write the reply's final row; returns the new chat title if this turn set one."""
        fields = dict(record.fields)
        if usage is not None:
            fields["usage"] = usage.as_dict()
        if error is not None:
            fields["error"] = {"content": error}
        if cancelled:
            fields["cancelled"] = True
        record.content, record.done, record.fields, record.draft = content, True, fields, None
        await self.store.update_message(record)
        fresh = await self.store.get_chat(chat.id)
        if fresh is None:  # deleted while the reply ran
            return None
        title = None
        if fresh.title in ("", DEFAULT_TITLE) and error is None:
            title = await self._first_user_text(chat)
        fresh.updated_at = now_s()
        if title:
            fresh.title = title
        await self.store.update_chat(fresh)
        return title or None

    async def _first_user_text(self, chat: ChatRecord) -> str | None:
        for message in await self.store.get_messages(chat.id):
            if message.role == "user" and message.content.strip():
                text = " ".join(message.content.split())
                return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
        return None

    # -- stop and recovery -----------------------------------------------------
    def replies_of(self, chat_id: str) -> list[Running]:
        return [r for r in self.running.values() if r.chat_id == chat_id]

    async def cancel(self, running: Running) -> None:
        running.cancelled_by_user = True
        if running.task is not None and not running.task.done():
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task

    async def cancel_chat(self, chat_id: str) -> int:
        replies = self.replies_of(chat_id)
        for running in replies:
            await self.cancel(running)
        return len(replies)

    async def recover_unfinished(self) -> int:
        """Finalise replies a crash left with done=false: their draft becomes the content."""
        recovered = 0
        for record in await self.store.unfinished_messages():
            if record.id in self.running:
                continue
            record.fields = {**record.fields, "error": {"content": CRASH_NOTE}}
            record.content = record.draft or record.content
            record.done = True
            record.draft = None
            await self.store.update_message(record)
            recovered += 1
        if recovered:
            log.warning("finalised replies left unfinished by a crash", extra={"count": recovered})
        return recovered

    async def shutdown(self) -> None:
        for running in list(self.running.values()):
            if running.task is not None:
                running.task.cancel()
        tasks = [r.task for r in self.running.values() if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


def _with_title(event: ReplyFinished, title: str | None) -> ReplyFinished:
    if title is None:
        return event
    return ReplyFinished(
        event.chat_id,
        event.message_id,
        event.seq,
        event.content,
        event.usage,
        event.finish_reason,
        event.elapsed_s,
        event.cancelled,
        title,
    )
