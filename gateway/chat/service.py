"""The chat service: what each command does to the chat tree, and which replies
it starts.  Running a reply is `runner.py`'s; the registry of running replies
(stop anywhere, recovery) is `running.py`'s; a turn written into the tree is
`turns.py`'s (pure).

One entry point per command::

    open_reply(principal, Ask)    pure API: nothing stored, the caller iterates
                                  the events (closing them stops the upstream)
    start_reply(principal, Ask)   backend-controlled (`chat_id` + `id`): one
                                  placeholder; the upstream is opened before
                                  returning, so "unknown model" is still an HTTP error
    start_turn(principal, Ask)    frontend mode (the web app): user message and
                                  placeholders written, answered at once; a failure
                                  to open arrives as a ReplyFailed event
    say(principal, Say)           a raw-WebSocket message (Nadoo, RAGFlow): a turn
                                  under the chat's current message, answered
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway import rooms
from gateway.bus import Replicas
from gateway.chat import tree
from gateway.chat.background import Background
from gateway.chat.chats import ChatBook, new_chat, now_s, title_for
from gateway.chat.reply import reply_events
from gateway.chat.runner import Opening, ReplyRunner, counted, refused
from gateway.chat.running import Running, RunningReplies
from gateway.chat.shapes import message_record
from gateway.chat.slots import ReplySlots
from gateway.chat.turns import (
    check_reply_into,
    conversation_for,
    new_placeholder,
    plan_turn,
    reanswer,
)
from gateway.commands import Ask, ReplyTarget, Say
from gateway.edge.auth import Principal
from gateway.edge.trace import Traces
from gateway.errors import BadRequest, GatewayError, NotFound, UpstreamError
from gateway.events import Event, ReplyFinished
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox
from gateway.fanout.presence import Presence
from gateway.store import ChatStore
from gateway.store.records import ChatRecord, MessageRecord
from gateway.upstream.router import ModelRouter

log = logging.getLogger(__name__)


def _empty_history() -> dict[str, Any]:
    return {"messages": {}, "currentId": None}


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(message.get("content") or "")) for message in messages)


def reply_rooms(
    user_id: str, chat_id: str, message_id: str, extra: tuple[str, ...] = ()
) -> list[str]:
    return [rooms.user(user_id), rooms.chat(chat_id), rooms.reply(chat_id, message_id), *extra]


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
        store: ChatStore,
        hub: Hub,
        checkpoint_interval_s: float = 1.0,
        default_model: str = "",
        presence: Presence | None = None,
        replicas: Replicas | None = None,
        background: Background | None = None,
        traces: Traces | None = None,
        max_replies_per_user: int | None = None,
    ) -> None:
        self.router = router
        self.store = store
        self.hub = hub
        self._default_model = default_model
        self.presence = presence or Presence()
        self.replies = RunningReplies(store, hub, replicas)
        self.book = ChatBook(store, self.replies.is_generating)
        self._slots = ReplySlots(max_replies_per_user)
        self._runner = ReplyRunner(
            store, hub, self.replies, self.presence, checkpoint_interval_s, traces, self._slots
        )
        # The live traces of this replica's replies (`edge/trace.py`).
        self.traces = self._runner.traces
        self._background = background

    def replies_running(self) -> int:
        """Replies running in this replica, stored or not (pure-API streams too)."""
        return self._slots.total()

    async def all_replies_ended(self) -> None:
        """Until no reply runs in this replica."""
        await self._slots.idle()

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
            split_reasoning=chat_id is not None,
        )

    # -- pure API mode -------------------------------------------------------
    async def open_reply(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Nothing stored; the caller consumes the events (and closing them stops the upstream).

        Raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error.
        """
        message_id = f"chatcmpl-{uuid.uuid4().hex}"
        user_id = principal.user_id
        self._slots.take(user_id)
        try:
            events = await self._open(
                ask.model,
                ask.messages,
                ask.params,
                chat_id=None,
                message_id=message_id,
                user_id=principal.user_id,
                parent_id=None,
            )
        except BaseException as exc:
            self._slots.release(user_id)
            if isinstance(exc, GatewayError):
                refused(user_id, None, message_id, exc)
            raise
        return counted(events, user_id, message_id, lambda: self._slots.release(user_id))

    # -- backend-controlled mode ---------------------------------------------
    async def start_reply(self, principal: Principal, ask: Ask) -> StartedReply:
        """Answer into `history.messages[message_id]` of an existing chat.

        The placeholder is created under the last user message when it is
        missing (reported in `repaired`).  The chat and placeholder are
        written before this returns; the reply then streams in its own task.
        """
        if ask.chat_id is None or ask.message_id is None:
            raise BadRequest("'chat_id' and 'id' are required to answer into a chat")
        chat_id, message_id = ask.chat_id, ask.message_id
        chat = await self.book.owned(principal, chat_id)
        self._slots.take(chat.user_id)
        try:
            return await self._start_reply(chat, ask, message_id)
        except BaseException:
            self._slots.release(chat.user_id)
            raise

    async def _start_reply(self, chat: ChatRecord, ask: Ask, message_id: str) -> StartedReply:
        """`start_reply` once its slot is taken (given back by the caller if this raises)."""
        history = await self.book.history(chat)
        messages = history["messages"]
        repaired = None
        if message_id in messages:
            check_reply_into(history, messages[message_id], ask.parent_id)
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
        conversation = conversation_for(path, ask.messages)
        record = message_record(chat.id, placeholder)
        chat.current_id = record.id
        chat.updated_at = now_s()
        await self.store.save_chat(chat, [record])
        outbox = self.hub.subscribe([rooms.reply(chat.id, record.id)])
        try:
            events = await self._opener(ask.model, conversation, ask.params, record, chat)()
        except GatewayError as exc:
            self.hub.unsubscribe(outbox)
            await self._runner.refused(record, exc, chat.user_id)
            raise

        async def opened() -> AsyncGenerator[Event, None]:
            return events

        title = title_for(chat, history)
        running = self._run(chat.id, record.id, chat.user_id, opened, record, title, ask.rooms)
        return StartedReply(running.task_id, chat.id, record.id, outbox, repaired)

    # -- frontend mode ----------------------------------------------------------
    async def start_turn(
        self, principal: Principal, ask: Ask, tasks: frozenset[str] = frozenset()
    ) -> StartedTurn:
        """Write the turn (creating the chat when `chat_id` is absent), then answer it.

        Returns once the user message and every placeholder are stored; the
        replies stream to `user:<owner>` (every socket of the user).  `tasks`
        are the web app's background tasks for each finished reply (a
        generated title, tags, follow-ups: `background.py`).
        """
        if ask.temporary:
            return self._start_temporary(principal, ask)
        if ask.chat_id is None:
            chat, history = new_chat(principal.user_id, ask.model), _empty_history()
        else:
            chat, history = await self._chat_and_history(principal, ask.chat_id)
        return await self._answer_turn(chat, history, ask, new=ask.chat_id is None, tasks=tasks)

    async def say(
        self,
        principal: Principal,
        say: Say,
        *,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        rooms: tuple[str, ...] = (),
        chat: ChatRecord | None = None,
        stored: bool = True,
    ) -> StartedTurn:
        """A user message from a raw-WebSocket client (Nadoo, RAGFlow): it goes under
        the chat's current message (or starts a new chat) and is answered.

        `chat`: the chat `say.chat_id` names, as the caller already has it (read and
        found the principal's), so it is not read again; `stored=False`: made by the
        caller and not stored yet (a RAGFlow session opened by its first question),
        written with the turn, in one write."""
        model = await self.pick_model(say.model)
        if chat is not None:
            if chat.id != say.chat_id or chat.user_id != principal.user_id:
                raise NotFound("Chat not found")
            history = await self.book.history(chat) if stored else _empty_history()
        elif say.chat_id is None:
            chat, history = new_chat(principal.user_id, model), _empty_history()
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
        new = say.chat_id is None or not stored
        return await self._answer_turn(chat, history, ask, new=new)

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

    async def _chat_and_history(
        self, principal: Principal, chat_id: str
    ) -> tuple[ChatRecord, dict[str, Any]]:
        chat = await self.book.owned(principal, chat_id)
        return chat, await self.book.history(chat)

    async def _answer_turn(
        self,
        chat: ChatRecord,
        history: dict[str, Any],
        ask: Ask,
        *,
        new: bool,
        tasks: frozenset[str] = frozenset(),
    ) -> StartedTurn:
        created = now_s()
        turn = plan_turn(history, ask, created)
        records = [message_record(chat.id, message) for message in turn.writes]
        chat.current_id = turn.history["currentId"]
        chat.updated_at = created
        path = tree.path_to(turn.history, turn.question_id) if turn.question_id else []
        conversation = conversation_for(path, ask.messages)
        by_id = {record.id: record for record in records}
        # A title the model writes replaces the question's first words, when asked for.
        title = None if "title_generation" in tasks else title_for(chat, turn.history)
        # One slot a reply (each given back at its end, by its runner).
        self._slots.take(chat.user_id, len(turn.replies))
        # The turn is written while its replies' model servers are asked; their
        # events wait for the write, and a failed write ends them (`runner.py`).
        # The write begins behind the requests (`_behind_the_replies`).
        # Shielded: a caller that leaves mid-write does not undo its turn.
        write = self.store.insert_chat if new else self.store.save_chat
        written = asyncio.ensure_future(
            _behind_the_replies(functools.partial(write, chat, records))
        )
        task_ids = []
        for placeholder, target in turn.replies:
            record = by_id[placeholder["id"]]
            opening = self._opener(target.model, conversation, ask.params, record, chat)
            after = self._after(chat, record.id, target.model, tasks)
            running = self._run(
                chat.id, record.id, chat.user_id, opening, record, title, ask.rooms, after, written
            )
            task_ids.append(running.task_id)
        await asyncio.shield(written)
        return StartedTurn(chat.id, task_ids, [p["id"] for p, _ in turn.replies])

    def _start_temporary(self, principal: Principal, ask: Ask) -> StartedTurn:
        """An unsaved chat: the request carries the conversation; nothing is stored."""
        assert ask.chat_id is not None
        task_ids = []
        self._slots.take(principal.user_id, len(ask.reply_targets()))
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
        after: Callable[[ReplyFinished], None] | None = None,
        written: asyncio.Future[None] | None = None,
    ) -> Running:
        running = Running(
            uuid.uuid4().hex,
            chat_id,
            message_id,
            user_id,
            reply_rooms(user_id, chat_id, message_id, rooms),
        )
        self._runner.start(running, opening, record, title, after, written)
        return running

    def _after(
        self, chat: ChatRecord, message_id: str, model: str, tasks: frozenset[str]
    ) -> Callable[[ReplyFinished], None] | None:
        """What a finished reply of this turn sets off: its background tasks."""
        background = self._background
        if not tasks or background is None:
            return None
        chat_id, user_id = chat.id, chat.user_id
        return lambda _end: background.after_reply(chat_id, message_id, user_id, model, tasks)


# How many loop turns a turn's write waits before it begins (`_behind_the_replies`).
WRITE_BEHIND_TURNS = 2


async def _behind_the_replies(write: Callable[[], Awaitable[None]]) -> None:
    """`write()`, begun `WRITE_BEHIND_TURNS` loop turns late, so that the model
    servers' requests of the turn's replies (whose tasks are made just after this
    one) go out first: in the first turn each reply's task builds its request, and
    aiohttp on Python 3.11 hands the request's bytes to a task of its own, which
    writes them in the second.  Only a reply's first event waits for the write.
    Best effort: a reply that must first connect, or list the models, sends later.
    Begun first, the write's serialising and its thread (which takes the
    interpreter's lock in turns with the loop) held the requests back
    (bench/RESULTS.md, "A stored turn, per flavour")."""
    for _ in range(WRITE_BEHIND_TURNS):
        await asyncio.sleep(0)
    await write()
