"""The chat service: runs replies.  `generate` is the only writer of replies.

A stored reply goes through three states, each one row write at most::

    placeholder  {content: "", done: false}            written before streaming
    streaming    draft column checkpointed ~once a second (content untouched,
                 so a poller never mistakes half a reply for a whole one)
    finished     {content: <all>, done: true, usage, ...}  one write at the end
                 (or the partial text with an `error` note, or `cancelled`)

Events go to the hub rooms `user:<owner>`, `chat:<id>` and the reply's own
room; `ReplyFinished` is published only after the row is written, so a
client that reloads on it sees the final text.  A reply runs in its own
task: a client that disconnects does not stop it (it lands in the chat), a
stop request does.  Running replies, stops and recovery after a crash are
`running.py`'s (`self.replies`).

Three ways in, one `generate`:

    open_reply     pure API: nothing stored, the caller iterates the events
    start_reply    backend-controlled: one placeholder; the upstream is opened
                   before returning, so "unknown model" is still an HTTP error
    start_turn     frontend mode (the web app): user message + placeholders
                   written, answered at once; the upstream is opened inside each
                   reply's task and a failure arrives as a ReplyFailed event
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.chat import tree
from gateway.chat.chats import DEFAULT_TITLE, DEFAULT_TITLES, ChatBook, now_s, title_for
from gateway.chat.reply import reply_events
from gateway.chat.running import Replies, Running
from gateway.chat.shapes import history_of, message_record
from gateway.chat.turns import new_placeholder, plan_turn, reanswer
from gateway.commands import Ask, ReplyTarget, Say
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, GatewayError, UpstreamError
from gateway.events import (
    ChatTitleChanged,
    Event,
    Notification,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.fanout.hub import Hub, Outbox, reply_room
from gateway.fanout.presence import Presence
from gateway.store import Store
from gateway.store.records import ChatRecord, MessageRecord
from gateway.upstream.router import ModelRouter

log = logging.getLogger(__name__)

NOTIFICATION_PREVIEW_CHARS = 140


def notify_room(user_id: str) -> str:
    return f"notify:{user_id}"


Opening = Callable[[], Awaitable[AsyncGenerator[Event, None]]]


def _empty_history() -> dict[str, Any]:
    return {"messages": {}, "currentId": None}


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(message.get("content") or "")) for message in messages)


def reply_rooms(
    user_id: str, chat_id: str, message_id: str, extra: tuple[str, ...] = ()
) -> list[str]:
    return [f"user:{user_id}", f"chat:{chat_id}", reply_room(chat_id, message_id), *extra]


@dataclass(slots=True)
class StartedReply:
    task_id: str
    chat_id: str
    message_id: str
    outbox: Outbox
    repaired: str | None = None


@dataclass(frozen=True, slots=True)
class StartedTurn:
    chat_id: str
    task_ids: list[str]
    message_ids: list[str]


class ChatService:
    def __init__(
        self,
        router: ModelRouter,
        store: Store,
        hub: Hub,
        checkpoint_interval_s: float = 1.0,
        default_model: str = "",
        presence: Presence | None = None,
    ) -> None:
        self.router = router
        self.store = store
        self.hub = hub
        self._default_model = default_model
        self._presence = presence
        self.replies = Replies(store, hub)
        self.book = ChatBook(store, self.replies.is_generating)
        self._checkpoint_interval_s = checkpoint_interval_s

    # -- opening a reply -------------------------------------------------------
    async def _open(
        self,
        model: str,
        conversation: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        chat_id: str | None,
        message_id: str,
        user_id: str,
        parent_id: str | None,
    ) -> AsyncGenerator[Event, None]:
        """Resolve the model and open the upstream; raises before any event."""
        upstream = await self.router.resolve(model)
        stream = await upstream.open(model, conversation, params)
        return reply_events(
            stream,
            chat_id=chat_id,
            message_id=message_id,
            user_id=user_id,
            parent_id=parent_id,
            model=model,
            prompt_chars=_prompt_chars(conversation),
        )

    # -- pure API mode -------------------------------------------------------
    async def open_reply(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Nothing stored; the caller consumes the events (and closing them stops the upstream).

        Raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error.
        """
        return await self._open(
            ask.model,
            ask.messages,
            ask.params,
            chat_id=None,
            message_id=f"chatcmpl-{uuid.uuid4().hex}",
            user_id=principal.user_id,
            parent_id=None,
        )

    # -- backend-controlled mode ---------------------------------------------
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
            placeholder = reanswer(messages[message_id], ask.model)
        else:
            parent = tree.last_user_message_id(history)
            if parent is None:
                raise BadRequest("The chat has no user message to answer")
            placeholder = new_placeholder(message_id, parent, ask.model, now_s())
            repaired = f"created assistant placeholder {message_id} under user message {parent}"
        parent_id = placeholder.get("parentId")
        path = (
            tree.path_to(history, parent_id)
            if isinstance(parent_id, str) and parent_id in messages
            else []
        )
        conversation = self._conversation(path, ask.messages)
        record = message_record(chat.id, placeholder)
        chat.current_id = record.id
        chat.updated_at = now_s()
        await self.store.save_chat(chat, [record])
        outbox = self.hub.subscribe([reply_room(chat.id, record.id)])
        try:
            events = await self._opener(ask.model, conversation, ask.params, record, chat)()
        except GatewayError as exc:
            self.hub.unsubscribe(outbox)
            await self._finish(record, "", error=exc.message)
            raise

        async def opened() -> AsyncGenerator[Event, None]:
            return events

        title = title_for(chat, history)
        running = self._run(chat.id, record.id, chat.user_id, opened, record, title, ask.rooms)
        return StartedReply(running.task_id, chat.id, record.id, outbox, repaired)

    # -- frontend mode ----------------------------------------------------------
    async def start_turn(self, principal: Principal, ask: Ask) -> StartedTurn:
        """Write the turn (creating the chat when `chat_id` is absent), then answer it.

        Returns once the user message and every placeholder are stored; the
        replies stream to `user:<owner>` (every socket of the user).
        """
        if ask.temporary:
            return self._start_temporary(principal, ask)
        if ask.chat_id is None:
            chat, history = self._new_chat(principal, ask.model), _empty_history()
        else:
            chat, history = await self._chat_and_history(principal, ask.chat_id)
        return await self._answer_turn(chat, history, ask, new=ask.chat_id is None)

    async def say(
        self,
        principal: Principal,
        say: Say,
        *,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        rooms: tuple[str, ...] = (),
    ) -> StartedTurn:
        """A user message from a raw-WebSocket client (Nadoo, RAGFlow): it goes under
        the chat's current message (or starts a new chat) and is answered."""
        model = await self.pick_model(say.model)
        if say.chat_id is None:
            chat, history = self._new_chat(principal, model), _empty_history()
        else:
            chat, history = await self._chat_and_history(principal, say.chat_id)
        now = now_s()
        reply_id = str(uuid.uuid4())
        ask = Ask(
            model=model,
            messages=[{"role": "system", "content": system}] if system else [],
            chat_id=chat.id,
            parent_id=history["currentId"],
            user_message={
                "id": str(uuid.uuid4()),
                "role": "user",
                "content": say.text,
                "timestamp": now,
            },
            targets=(ReplyTarget(reply_id, model),),
            rooms=rooms,
            params=params or {},
        )
        return await self._answer_turn(chat, history, ask, new=say.chat_id is None)

    async def pick_model(self, hint: str | None) -> str:
        """The model a client named, if it exists; else the configured default; else
        the first model the upstreams list."""
        known = [model.id for model in await self.router.models()]
        if hint and hint in known:
            return hint
        if self._default_model:
            return self._default_model
        if not known:
            raise UpstreamError("No model is available: configure OPENAI_API_BASE_URL")
        return known[0]

    def _new_chat(self, principal: Principal, model: str) -> ChatRecord:
        created = now_s()
        return ChatRecord(
            id=str(uuid.uuid4()),
            user_id=principal.user_id,
            title=DEFAULT_TITLE,
            current_id=None,
            created_at=created,
            updated_at=created,
            extra={"timestamp": created * 1000, "models": [model]},
        )

    async def _chat_and_history(
        self, principal: Principal, chat_id: str
    ) -> tuple[ChatRecord, dict[str, Any]]:
        chat = await self.book.owned(principal, chat_id)
        return chat, history_of(chat, await self.store.get_messages(chat.id))

    async def _answer_turn(
        self, chat: ChatRecord, history: dict[str, Any], ask: Ask, *, new: bool
    ) -> StartedTurn:
        created = now_s()
        turn = plan_turn(history, ask, created)
        records = [message_record(chat.id, message) for message in turn.writes]
        chat.current_id = turn.history["currentId"]
        chat.updated_at = created
        if new:
            await self.store.insert_chat(chat, records)
        else:
            await self.store.save_chat(chat, records)
        path = tree.path_to(turn.history, turn.question_id) if turn.question_id else []
        conversation = self._conversation(path, ask.messages)
        by_id = {record.id: record for record in records}
        title = title_for(chat, turn.history)
        task_ids = []
        for placeholder, target in turn.replies:
            record = by_id[placeholder["id"]]
            opening = self._opener(target.model, conversation, ask.params, record, chat)
            running = self._run(chat.id, record.id, chat.user_id, opening, record, title, ask.rooms)
            task_ids.append(running.task_id)
        return StartedTurn(chat.id, task_ids, [p["id"] for p, _ in turn.replies])

    def _start_temporary(self, principal: Principal, ask: Ask) -> StartedTurn:
        """An unsaved chat: the request carries the conversation; nothing is stored."""
        assert ask.chat_id is not None
        task_ids = []
        for target in ask.reply_targets():
            opening = functools.partial(
                self._open,
                target.model,
                ask.messages,
                ask.params,
                chat_id=ask.chat_id,
                message_id=target.message_id,
                user_id=principal.user_id,
                parent_id=ask.parent_id,
            )
            running = self._run(
                ask.chat_id, target.message_id, principal.user_id, opening, rooms=ask.rooms
            )
            task_ids.append(running.task_id)
        return StartedTurn(ask.chat_id, task_ids, [t.message_id for t in ask.reply_targets()])

    def _opener(
        self,
        model: str,
        conversation: list[dict[str, Any]],
        params: dict[str, Any],
        record: MessageRecord,
        chat: ChatRecord,
    ) -> Opening:
        """How a stored reply's upstream is opened (now, or inside its task)."""
        return functools.partial(
            self._open,
            model,
            conversation,
            params,
            chat_id=chat.id,
            message_id=record.id,
            user_id=chat.user_id,
            parent_id=record.parent_id,
        )

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

    # -- running a reply ---------------------------------------------------------
    def _run(
        self,
        chat_id: str,
        message_id: str,
        user_id: str,
        opening: Opening,
        record: MessageRecord | None = None,
        title: str | None = None,
        rooms: tuple[str, ...] = (),
    ) -> Running:
        running = Running(
            uuid.uuid4().hex,
            chat_id,
            message_id,
            user_id,
            reply_rooms(user_id, chat_id, message_id, rooms),
        )
        self.replies.start(running, self.generate(running, opening, record, title))
        return running

    async def generate(
        self,
        running: Running,
        opening: Opening,
        record: MessageRecord | None = None,
        title: str | None = None,
    ) -> None:
        """Stream one reply to its rooms; store it into `record` when given.

        `title` is what the chat is named when the reply succeeds, if the
        chat has no title of its own by then."""
        chat_id, message_id, rooms = running.chat_id, running.message_id, running.rooms
        parts: list[str] = []
        last_checkpoint = time.monotonic()
        checkpoint: asyncio.Task[None] | None = None
        started = time.monotonic()
        seq = 0
        try:
            try:
                events = await opening()
            except GatewayError as exc:
                if record is not None:
                    await self._finish(record, "", error=exc.message)
                self.hub.publish(rooms, ReplyFailed(chat_id, message_id, 0, exc.code, exc.message))
                return
            async with contextlib.aclosing(events):
                async for event in events:
                    seq = event.seq if isinstance(event, ReplyStarted | TextDelta) else seq
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                        now = time.monotonic()
                        if (
                            record is not None
                            and now - last_checkpoint >= self._checkpoint_interval_s
                            and (checkpoint is None or checkpoint.done())
                        ):
                            last_checkpoint = now
                            checkpoint = asyncio.create_task(
                                self.store.checkpoint_draft(chat_id, message_id, "".join(parts))
                            )
                    if isinstance(event, ReplyFinished):
                        titled = None
                        if record is not None:
                            titled = await self._finish(
                                record, event.content, title=title, usage=event.usage
                            )
                        self.hub.publish(
                            rooms, event if titled is None else replace(event, title=titled)
                        )
                        if titled is not None:
                            changed = ChatTitleChanged(chat_id, message_id, event.seq + 1, titled)
                            self.hub.publish(rooms, changed)
                        if record is not None:
                            self._notify_if_unwatched(running, event.content)
                    elif isinstance(event, ReplyFailed):
                        if record is not None:
                            await self._finish(record, event.partial_content, error=event.message)
                        self.hub.publish(rooms, event)
                    else:
                        self.hub.publish(rooms, event)
        except asyncio.CancelledError:
            # A stop request (or shutdown): keep what was streamed, end cleanly.
            content = "".join(parts)
            titled = None
            if record is not None:
                with contextlib.suppress(Exception):
                    finishing = self._finish(record, content, title=title, cancelled=True)
                    titled = await asyncio.shield(finishing)
            usage = Usage(0, (len(content) + 3) // 4, estimated=True)
            self.hub.publish(
                rooms,
                ReplyFinished(
                    chat_id,
                    message_id,
                    seq + 1,
                    content,
                    usage,
                    "cancelled",
                    time.monotonic() - started,
                    cancelled=True,
                    title=titled,
                ),
            )
            if not running.cancelled_by_user:
                raise
        except Exception:
            log.exception("reply failed", extra={"chat_id": chat_id, "message_id": message_id})
            content = "".join(parts)
            if record is not None:
                with contextlib.suppress(Exception):
                    await self._finish(record, content, error="Internal error")
            self.hub.publish(
                rooms,
                ReplyFailed(
                    chat_id, message_id, seq + 1, "internal_error", "Internal error", content
                ),
            )
        finally:
            if checkpoint is not None and not checkpoint.done():
                checkpoint.cancel()
            self.replies.ended(running)

    def _notify_if_unwatched(self, running: Running, content: str) -> None:
        """A reply that finished while none of the user's chat sockets was open
        becomes a notification (Nadoo's `/ws/notifications/{user_id}`)."""
        if self._presence is None or self._presence.watching(running.user_id):
            return
        preview = " ".join(content.split())
        if len(preview) > NOTIFICATION_PREVIEW_CHARS:
            preview = preview[: NOTIFICATION_PREVIEW_CHARS - 1] + "…"
        note = Notification(running.user_id, "Reply ready", preview, f"/c/{running.chat_id}")
        self.hub.publish([notify_room(running.user_id)], note)

    async def _finish(
        self,
        record: MessageRecord,
        content: str,
        *,
        title: str | None = None,
        usage: Usage | None = None,
        error: str | None = None,
        cancelled: bool = False,
    ) -> str | None:
        """Write the reply's final row (one transaction); returns the chat's new title
        when this reply gave the chat its first one."""
        fields = dict(record.fields)
        if usage is not None:
            fields["usage"] = usage.as_dict()
        if error is not None:
            fields["error"] = {"content": error}
        if cancelled:
            fields["cancelled"] = True
        record.content, record.done, record.fields, record.draft = content, True, fields, None
        offered = title if error is None else None
        titled = await self.store.finish_reply(record, now_s(), offered, DEFAULT_TITLES)
        return offered if titled else None
