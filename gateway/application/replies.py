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
    stop(target) / tasks(...)       running replies on any replica

The chat core (`gateway/chat/`) does the work; this is the one door to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway import rooms
from gateway.chat.running import StopTarget
from gateway.chat.service import ChatService, StartedTurn
from gateway.commands import Ask, Say
from gateway.edge.auth import Principal
from gateway.errors import UpstreamError
from gateway.events import Event, ReplyFailed, ReplyFinished
from gateway.fanout.hub import Hub, Outbox, until_finished
from gateway.upstream import ModelInfo

__all__ = ["Following", "Replies", "StartedTurn", "StopTarget", "finished"]


@dataclass(slots=True)
class Following:
    """A started reply and its events, for the request that asked for it."""

    chat_id: str
    message_id: str
    events: AsyncGenerator[Event, None]
    repaired: str | None = None


class Replies:
    def __init__(self, service: ChatService, hub: Hub) -> None:
        self._service = service
        self._hub = hub

    # -- models ------------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        return await self._service.router.models()

    async def model_ids(self) -> list[str]:
        return [model.id for model in await self.models()]

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
        return Following(started.chat_id, started.message_id, events, started.repaired)

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
    ) -> StartedTurn:
        return await self._service.say(principal, say, system=system, params=params, rooms=rooms)

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
