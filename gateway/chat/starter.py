"""How a command's replies are started.  `service.py` decides what a command
writes into the chat tree and which replies it asks for; this module starts
them; `runner.py` runs each one.

Starting a reply is four things, each in one place here::

    open(...)     the reply's model server resolved and asked; raises before
                  any event (unknown model, a refusal), so a caller that opens
                  before answering can still answer with a plain error
    _run(...)     its `Running` (id, owner, rooms) made and handed to the
                  runner, which opens it inside its task (listed and
                  stoppable from then on)
    turn(...)     a turn `service.py` planned: its rows written behind its
                  replies' requests (`_behind_the_replies`), each reply run,
                  the write awaited
    into(...)     a backend-controlled reply: its placeholder written, the
                  reply run, its caller answered once the model server has
                  (`_telling`)

A stored reply's message is held (`RunningReplies.claim`) then its slot
(`slots.py`) taken here before anything is written; both are given back by
the runner at its end, or here (`into`: `ReplyRunner.unopened`) when its
placeholder's write fails or its caller leaves during it.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway import rooms
from gateway.chat.background import Background
from gateway.chat.reply import reply_events
from gateway.chat.runner import Opening, ReplyRunner
from gateway.chat.running import Running, RunningReplies
from gateway.chat.shapes import message_record
from gateway.chat.slots import ReplySlots
from gateway.chat.turns import Turn
from gateway.commands import Ask
from gateway.edge.auth import Principal
from gateway.errors import GatewayError
from gateway.events import Event, ReplyFinished
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox
from gateway.store import ChatStore
from gateway.store.records import ChatRecord, MessageRecord
from gateway.upstream.router import ModelRouter


def reply_rooms(
    user_id: str, chat_id: str, message_id: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """Where a reply's events are published: its owner's every socket, its chat,
    the reply itself, and the caller's own rooms."""
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


class ReplyStarter:
    def __init__(
        self,
        router: ModelRouter,
        store: ChatStore,
        hub: Hub,
        runner: ReplyRunner,
        registry: RunningReplies,
        slots: ReplySlots,
        background: Background | None,
    ) -> None:
        self._router = router
        self._store = store
        self._hub = hub
        self._runner = runner
        self._registry = registry
        self._slots = slots
        self._background = background

    # -- opening a reply ---------------------------------------------------------
    async def open(
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
        upstream = await self._router.resolve(model)
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

    def _opener(
        self,
        model: str,
        conversation: list[dict[str, Any]],
        params: dict[str, Any],
        record: MessageRecord,
        chat: ChatRecord,
    ) -> Opening:
        """How a stored reply's upstream is opened, inside its task."""
        return functools.partial(
            self.open,
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

    # -- what the commands start -------------------------------------------------
    async def into(
        self,
        chat: ChatRecord,
        record: MessageRecord,
        ask: Ask,
        conversation: list[dict[str, Any]],
        title: str | None,
        repaired: str | None,
    ) -> StartedReply:
        """A placeholder answered (backend-controlled mode): its message held and a
        reply slot taken (a `Conflict`, 409, then a `RateLimited`, 429, before
        anything is written), the placeholder written (with its chat's row), then
        the reply run, opening its model server in its own task: a stop reaches it
        while the model server has not answered yet (a model being loaded can take
        seconds).  Returns once the model server answered, or refused (its
        `GatewayError` raised here once the reply's end is stored, so "unknown model"
        is still the caller's plain error; the failed end is sent to the chat's
        watchers like any end), or the reply was stopped or failed first (its end
        comes in its events).  A caller that leaves before then stops it; one
        that leaves during the write has its placeholder ended
        (`ReplyRunner.unopened`)."""
        await self._registry.claim(chat.id, [record.id], chat.user_id)
        try:
            self._slots.take(chat.user_id)
        except BaseException:
            self._registry.release(chat.id, [record.id], chat.user_id)
            raise
        outbox = self._hub.subscribe([rooms.reply(chat.id, record.id)])
        written = asyncio.ensure_future(self._store.save_chat(chat, [record]))
        try:
            # Shielded: a caller that leaves mid-write does not cut the write short.
            await asyncio.shield(written)
        except BaseException as exc:
            self._hub.unsubscribe(outbox)
            self._slots.release(chat.user_id)
            await self._runner.unopened(record, chat.user_id, exc, written)
            raise
        # From here the reply is its runner's: its slot, its message, its end.
        opened: asyncio.Future[GatewayError | None] = asyncio.get_running_loop().create_future()
        opening = _telling(self._opener(ask.model, conversation, ask.params, record, chat), opened)
        running = self._run(chat.id, record.id, chat.user_id, opening, record, title, ask.rooms)
        if running.task is not None:  # a task that ends without opening still tells
            running.task.add_done_callback(lambda _: _tell(opened, None))
        try:
            refused = await asyncio.shield(opened)
        except asyncio.CancelledError:
            self._hub.unsubscribe(outbox)
            if not opened.done():
                # The caller left before the model server answered: the reply is
                # stopped (its end stored, or on its way past `STOP_WAIT_S`) before
                # the cancel goes on.  Once it has
                # answered, the reply runs on without its caller, as any reply does.
                await asyncio.shield(self._registry.cancel(running))
            raise
        if refused is not None:
            self._hub.unsubscribe(outbox)
            if running.task is not None:
                # Answered once its end is stored and its message let go: a caller
                # that asks again at once, with a model that exists, is not refused.
                await asyncio.wait([running.task])
            raise refused
        return StartedReply(running.task_id, chat.id, record.id, outbox, repaired)

    async def turn(
        self,
        chat: ChatRecord,
        turn: Turn,
        ask: Ask,
        *,
        new: bool,
        title: str | None,
        tasks: frozenset[str] = frozenset(),
    ) -> StartedTurn:
        """A planned turn (`turns.py`) written and answered: returns once its rows
        are stored (`new`: the chat's too), its replies running.  A reply into a
        message another reply is being written into, here or on another replica,
        is a `Conflict` (409), before anything is written."""
        records = [message_record(chat.id, message) for message in turn.writes]
        by_id = {record.id: record for record in records}
        message_ids = [placeholder["id"] for placeholder, _ in turn.replies]
        # Each message held until its reply's end, one slot a reply given back
        # then (both by its runner).
        await self._registry.claim(chat.id, message_ids, chat.user_id)
        try:
            self._slots.take(chat.user_id, len(turn.replies))
        except BaseException:
            self._registry.release(chat.id, message_ids, chat.user_id)
            raise
        # The turn is written while its replies' model servers are asked; their
        # events wait for the write, and a failed write ends them (`runner.py`).
        # The write begins behind the requests (`_behind_the_replies`).
        # Shielded: a caller that leaves mid-write does not undo its turn.
        write = self._store.insert_chat if new else self._store.save_chat
        written = asyncio.ensure_future(
            _behind_the_replies(functools.partial(write, chat, records))
        )
        task_ids = []
        for placeholder, target in turn.replies:
            record = by_id[placeholder["id"]]
            opening = self._opener(target.model, turn.conversation, ask.params, record, chat)
            after = self._after(chat, record.id, target.model, tasks)
            running = self._run(
                chat.id, record.id, chat.user_id, opening, record, title, ask.rooms, after, written
            )
            task_ids.append(running.task_id)
        await asyncio.shield(written)
        return StartedTurn(chat.id, task_ids, message_ids)

    def temporary(self, principal: Principal, ask: Ask) -> StartedTurn:
        """An unsaved chat: the request carries the conversation; nothing is stored."""
        assert ask.chat_id is not None
        task_ids = []
        self._slots.take(principal.user_id, len(ask.reply_targets()))
        for target in ask.reply_targets():
            opening = functools.partial(
                self.open,
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


def _telling(opening: Opening, opened: asyncio.Future[GatewayError | None]) -> Opening:
    """`opening`, telling `opened` how it went: the model server's refusal, or None
    (it answered; or the reply was stopped, or failed, first: its end says so)."""

    async def told() -> AsyncGenerator[Event, None]:
        refusal = None
        try:
            events = await opening()
        except GatewayError as exc:
            refusal = exc
            raise
        finally:
            _tell(opened, refusal)
        return events

    return told


def _tell(opened: asyncio.Future[GatewayError | None], refusal: GatewayError | None) -> None:
    if not opened.done():
        opened.set_result(refusal)


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(message.get("content") or "")) for message in messages)


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
