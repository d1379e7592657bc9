"""Replies, as routes and transports ask for them: start, follow, stop, list.

    open(principal, ask)            pure API: nothing stored; the caller iterates
                                    the events (closing them stops the upstream)
    start_reply(principal, ...)     backend-controlled: into a stored placeholder,
                                    followed by the request that asked (`Following`)
    start_turn(principal, ask)      frontend mode: the turn stored, the replies go
                                    to every socket of the user
    say(principal, say, ...)        a raw-WebSocket message: a turn, answered into
                                    the rooms the caller names
    follow(rooms) / finished(events)  a private room's events; a reply run to its end
    attach(principal, message_id, after)  a reply from a point: what the replay
                                    buffer kept after it, then live (`fanout/follow.py`)
    catch_up(principal, outbox)     the user's running replies, each as its text so far
                                    then live (a new tab, a fresh event stream); not
                                    those the new connection's rooms bring whole
    kept(principal)                 the user's replies the buffer keeps
    stream(principal)               one of the user's event streams, counted (429 past
                                    GATEWAY_MAX_FOLLOWERS_PER_USER)
    stop(target) / tasks(...)       running replies on any replica
    trace(principal, message_id)    a reply's live trace (this replica's)

The chat core (`gateway/chat/`) does the work; this is the one door to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway import rooms
from gateway.bus import KeptReply
from gateway.chat.running import StopTarget
from gateway.chat.service import ChatService
from gateway.chat.starter import StartedTurn
from gateway.commands import Ask, Say
from gateway.edge.auth import Principal
from gateway.edge.trace import Trace
from gateway.errors import BadRequest, NotFound, RateLimited, UpstreamError
from gateway.events import Event, ReplyFailed, ReplyFinished, ReplySnapshot
from gateway.fanout import follow as followers
from gateway.fanout.follow import Following as Attached
from gateway.fanout.hub import Hub, until_finished
from gateway.fanout.outbox import Outbox
from gateway.store import ChatRecord
from gateway.upstream import ModelInfo

__all__ = [
    "Attached",
    "Following",
    "KeptReply",
    "Replies",
    "StartedTurn",
    "StopTarget",
    "finished",
]


@dataclass(slots=True)
class Following:
    """A started reply and its events, for the request that asked for it; `close()`
    leaves the hub even when `events` never started (closing a generator that never
    ran does not run its `finally`: a request cancelled before its first event)."""

    chat_id: str
    message_id: str
    events: AsyncGenerator[Event, None]
    repaired: str | None = None
    close: Callable[[], None] = lambda: None


# The messages a title is asked for with, at most (the prompt quotes the end of
# their text: `background.CONVERSATION_CHARS`).
MAX_TITLE_MESSAGES = 10_000


class Replies:
    def __init__(self, service: ChatService, hub: Hub, max_streams_per_user: int = 16) -> None:
        self._service = service
        self._hub = hub
        self._max_streams = max_streams_per_user
        self._streams: dict[str, int] = {}

    # -- traces ------------------------------------------------------------------
    def trace(self, principal: Principal, message_id: str) -> Trace:
        """A reply's live trace (this replica's replies, kept a while after their end):
        its owner's or, for an admin, anyone's; NotFound otherwise (and for another
        user's, which is not told apart)."""
        traces = self._service.traces
        trace = traces.get(message_id, principal.user_id)
        if trace is None and principal.is_admin:
            trace = traces.get(message_id)
        if trace is None:
            raise NotFound(f"No trace of reply {message_id!r} on this replica")
        return trace

    # -- models ------------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        return await self._service.router.models()

    async def model(self, model_id: str) -> ModelInfo:
        """One model, found as a reply would find it (`ModelNotFound`, or
        `UpstreamError` when the server that may serve it is down)."""
        return (await self._service.router.lookup(model_id))[0]

    async def model_ids(self) -> list[str]:
        return [model.id for model in await self.models()]

    async def suggest_title(self, principal: Principal, model: Any, messages: Any) -> str:
        """The web app's rename › generate: a title for the conversation it sends."""
        if not isinstance(messages, list) or len(messages) > MAX_TITLE_MESSAGES:
            raise BadRequest(f"'messages' must be a list of at most {MAX_TITLE_MESSAGES}")
        hint = model if isinstance(model, str) and model else None
        return await self._service.suggest_title(principal, hint, messages)

    async def pick_model(self, hint: str | None) -> str:
        """The model a client named, if it exists; else the configured default; else
        the first model the upstreams list."""
        return await self._service.pick_model(hint)

    # -- starting ----------------------------------------------------------------
    async def open(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Pure API; raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error."""
        return await self._service.open_reply(principal, ask)

    async def start_reply(self, principal: Principal, ask: Ask) -> Following:
        """Into `history.messages[ask.message_id]` of chat `ask.chat_id`."""
        started = await self._service.start_reply(principal, ask)
        events = self._drained(started.outbox)
        close = functools.partial(self._hub.unsubscribe, started.outbox)
        return Following(started.chat_id, started.message_id, events, started.repaired, close)

    async def start_turn(
        self, principal: Principal, ask: Ask, tasks: frozenset[str] = frozenset()
    ) -> StartedTurn:
        """The web app's turn; `tasks` are its background tasks (`title_generation`,
        `tags_generation`, `follow_up_generation`) for each finished reply."""
        return await self._service.start_turn(principal, ask, tasks)

    async def say(
        self,
        principal: Principal,
        say: Say,
        *,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        rooms: tuple[str, ...] = (),
        chat: ChatRecord | None = None,
        history: dict[str, Any] | None = None,
        stored: bool = True,
    ) -> StartedTurn:
        """`chat`, `history`, `stored`: as `ChatService.say` (the chat the caller
        already has)."""
        return await self._service.say(
            principal,
            say,
            system=system,
            params=params,
            rooms=rooms,
            chat=chat,
            history=history,
            stored=stored,
        )

    # -- following -----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[tuple[str, AsyncGenerator[Event, None]]]:
        """A private room and the events published to it up to a reply's end: name the
        room when starting a reply, then read its events."""
        room = rooms.connection()
        outbox = self._hub.subscribe([room])
        try:
            yield room, until_finished(outbox)
        finally:
            self._hub.unsubscribe(outbox)

    async def _drained(self, outbox: Outbox) -> AsyncGenerator[Event, None]:
        try:
            async for event in until_finished(outbox):
                yield event
        finally:
            self._hub.unsubscribe(outbox)

    # -- resuming ------------------------------------------------------------------------
    async def attach(
        self,
        principal: Principal,
        message_id: str,
        after: int = -1,
        chat_id: str | None = None,
    ) -> Attached:
        """The user's reply `message_id` after `after` (-1: from its start); NotFound
        for a reply that is not the user's or that neither the buffer nor the store
        (given `chat_id`) knows."""
        found = await followers.follow(
            self._hub, principal.user_id, message_id, after, self._stored(principal), chat_id
        )
        if found is None:
            raise NotFound("No such reply")
        return found

    async def catch_up(
        self, principal: Principal, outbox: Outbox, skip: Iterable[str] = ()
    ) -> list[Attached]:
        """Every running reply of the user (but those in `skip`), each as its text so
        far, then live — but those `outbox` (a connection just subscribed, noting
        starts: `Outbox.note_starts`) has had from their start: its rooms bring them
        whole.  Noting ends here.  While the followers are set up, the rooms' copies
        of their replies are held back from `outbox` (the caller resumes them into
        it before it awaits again): a copy between a follower's read of the buffer
        and its divert would come twice."""
        found = []
        skipped = set(skip)
        try:
            running = [kept for kept in await self.kept(principal) if kept.ended_ms is None]
        finally:
            skipped |= outbox.stop_noting()
        caught = [kept for kept in running if kept.message_id not in skipped]
        with outbox.held([kept.message_id for kept in caught]):
            for kept in caught:
                one = await followers.follow(
                    self._hub,
                    principal.user_id,
                    kept.message_id,
                    -1,
                    self._stored(principal),
                    kept.chat_id,
                    catch_up=True,
                )
                if one is not None:
                    found.append(one)
        return found

    async def kept(self, principal: Principal, settled: bool = False) -> list[KeptReply]:
        """The user's replies the buffer keeps; `settled`: once what other replicas
        recorded until now is in it (their starts and ends)."""
        if settled and self._hub.journal.lag_s:
            await asyncio.sleep(self._hub.journal.lag_s)
        return await self._hub.journal.replies_of(principal.user_id)

    def _stored(self, principal: Principal) -> followers.Stored:
        async def stored(chat_id: str, message_id: str) -> ReplySnapshot | None:
            try:
                await self._service.book.owned(principal, chat_id)
            except NotFound:
                return None
            record = await self._service.store.get_message(chat_id, message_id)
            if record is None or record.role != "assistant":
                return None
            content = record.content if record.done else (record.draft or record.content)
            return ReplySnapshot(chat_id, message_id, -1, content, bool(record.done), False)

        return stored

    @contextlib.contextmanager
    def stream(self, principal: Principal) -> Iterator[None]:
        """One event stream of the user, while it is open (a bound per user and replica)."""
        user_id = principal.user_id
        if self._streams.get(user_id, 0) >= self._max_streams:
            raise RateLimited(
                f"At most {self._max_streams} event streams per user; close one first"
            )
        self._streams[user_id] = self._streams.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._streams[user_id] - 1
            if left:
                self._streams[user_id] = left
            else:
                del self._streams[user_id]

    # -- stopping and listing ----------------------------------------------------------
    async def stop(self, target: StopTarget) -> int:
        return await self._service.replies.stop(target)

    async def tasks(self, *, chat_id: str | None = None, user_id: str | None = None) -> list[str]:
        """The task ids of the replies running on any replica."""
        found = await self._service.replies.tasks(chat_id=chat_id, user_id=user_id)
        return [task.task_id for task in found]


async def finished(events: AsyncGenerator[Event, None]) -> tuple[ReplyFinished, list[Event]]:
    """A reply run to its end: its `ReplyFinished` and every event before it; a failed
    or unfinished reply is an `UpstreamError` (the caller answers in its flavour)."""
    seen: list[Event] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, ReplyFailed):
                raise UpstreamError(event.message)
            if isinstance(event, ReplyFinished):
                return event, seen
            seen.append(event)
    raise UpstreamError("The reply ended without finishing")
