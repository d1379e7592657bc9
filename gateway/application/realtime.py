"""What a live connection needs, whatever its transport: who it is, the rooms it
is in, what it may publish to them, who is connected, and for how long its
access holds.

    authenticate(token)            a Principal, or AuthError
    subscribe(rooms, …) → Outbox   the connection's bounded queue of events
    join(outbox, room)             one more room, received on every replica first
    unsubscribe(outbox)            when the connection ends
    publish(rooms, event)          presence and broadcasts (typing, joined, a
                                   workspace member's event); replies are the core's
    seat / unseat / owner_of       presence, for `/ws/stats` and "is anyone watching"
    hold(principal, end) → Lease   closes the connection when its access ends
    admit, track / untrack, streaming
                                   open WebSockets and event streams, which a
                                   stopping replica closes (`close_sockets`) and
                                   then refuses (503)
    resume(outbox, attached)       a resumed reply's events into the connection's
                                   outbox, in order, each once (a task; cancel it
                                   when the connection ends)
    pace(outbox, principal, attach)
                                   a reply the connection falls behind on is fed
                                   to it from the replay buffer as it reads, not
                                   dropped (`Outbox.on_behind`)

Transports (`gateway/transports/`) and the socket endpoints of `gateway/api/`
reach the fan-out only through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from gateway.application.access import AccessGuard, End, Lease
from gateway.bus import Sessions
from gateway.edge.auth import Authenticator, Principal
from gateway.errors import SERVER_STOPPING, NotFound, Unavailable
from gateway.events import Event, ReplyEvent
from gateway.fanout.follow import Following as Attached
from gateway.fanout.follow import into
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox, Overflow
from gateway.fanout.presence import Presence, Seat, stats
from gateway.text import close_reason

__all__ = ["Attach", "Attached", "Closable", "Lease", "Outbox", "Overflow", "Realtime", "Seat"]

log = logging.getLogger(__name__)

# A reply of a user, followed after a seq: (the user, message id, after, chat id).
Attach = Callable[[Principal, str, int, str], Awaitable[Attached]]


class Closable(Protocol):
    """An open WebSocket as a stopping replica sees it (aiohttp's WebSocketResponse)."""

    async def close(self, *, code: int, message: bytes) -> bool: ...


class Realtime:
    def __init__(
        self,
        hub: Hub,
        presence: Presence,
        access: AccessGuard,
        authenticator: Authenticator,
        sessions: Sessions,
    ) -> None:
        self._hub = hub
        # Which replica holds each Engine.IO session (the bus's replica registry).
        self._sessions = sessions
        self._presence = presence
        self._access = access
        self._authenticator = authenticator
        self._resuming: set[asyncio.Task[None]] = set()
        # Open raw WebSockets, for a stopping replica to close (Socket.IO's are its own),
        # and how to end each open event stream.
        self._sockets: set[Closable] = set()
        self._streams: set[End] = set()
        self._stopping = False

    async def authenticate(self, token: str | None) -> Principal:
        return await self._authenticator.authenticate(token)

    # -- rooms -----------------------------------------------------------------------
    def subscribe(
        self,
        rooms: Iterable[str],
        on_overflow: Callable[[], None] | None = None,
        deliver: Callable[[Event], bool] | None = None,
    ) -> Outbox:
        return self._hub.subscribe(rooms, on_overflow, deliver)

    async def join(self, outbox: Outbox, room: str) -> None:
        """Into `room`, here and (once subscribed) on every replica."""
        self._hub.join(outbox, room)
        await self._hub.watching([room])

    async def watching(self, rooms: Iterable[str]) -> None:
        await self._hub.watching(rooms)

    def unsubscribe(self, outbox: Outbox) -> None:
        self._hub.unsubscribe(outbox)

    def resume(self, outbox: Outbox, attached: Attached) -> asyncio.Task[None]:
        """`Replies.attach`'s events into `outbox` (its rooms' copies of the reply are
        dropped meanwhile)."""
        # At once, not when the task first runs: copies arriving meanwhile would
        # overtake the replay.
        outbox.divert(attached.message_id)
        task = asyncio.get_running_loop().create_task(into(outbox, attached))
        self._resuming.add(task)

        def ended(done: asyncio.Task[None]) -> None:
            # Also when cancelled before it ever ran.
            self._resuming.discard(done)
            outbox.undivert(attached.message_id)
            attached.close()

        task.add_done_callback(ended)
        return task

    def pace(self, outbox: Outbox, principal: Principal, attach: Attach) -> None:
        """When `outbox` has no room for a reply's event (its client reads slower than
        the model writes), that reply's rest is followed from the replay buffer
        (`attach`, as `principal`) and put into it as it drains, instead of the
        connection being dropped."""
        outbox.on_behind = _Behind(self, outbox, principal, attach)

    def _behind(
        self, outbox: Outbox, principal: Principal, attach: Attach, event: ReplyEvent, after: int
    ) -> None:
        assert event.chat_id is not None  # Outbox.on_behind's promise
        task = asyncio.get_running_loop().create_task(
            self._paced(outbox, principal, attach, event.message_id, after, event.chat_id)
        )
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _paced(
        self,
        outbox: Outbox,
        principal: Principal,
        attach: Attach,
        message_id: str,
        after: int,
        chat_id: str,
    ) -> None:
        # The outbox diverted the reply when it fell behind (`Outbox._no_room`); the
        # follower's `resume` diverts it again at once, so this undivert never lets
        # a room's copy through in between.
        try:
            if outbox.closed:
                return
            try:
                attached = await attach(principal, message_id, after, chat_id)
            except NotFound:
                log.warning("a reply fell behind on is gone", extra={"message_id": message_id})
                return
            if outbox.closed:
                attached.close()
                return
            self.resume(outbox, attached)  # a task of its own, ended with the reply
        finally:
            outbox.undivert(message_id)

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        self._hub.publish(rooms, event)

    # -- presence --------------------------------------------------------------------
    def seat(self, conn_id: str, seat: Seat) -> None:
        self._presence.add(conn_id, seat)

    def unseat(self, conn_id: str) -> None:
        self._presence.remove(conn_id)

    def owner_of(self, conn_id: str) -> str | None:
        """The user a connection of this replica is signed in as, if any."""
        seat = self._presence.here(conn_id)
        return None if seat is None else seat.user_id

    def stats(self, viewer: Principal) -> dict[str, Any]:
        """Nadoo's `/ws/stats`: everyone's totals; details of others for admins only."""
        if viewer.is_admin:
            return stats(self._presence.seats(), None, self._presence.by_replica())
        return stats(self._presence.seats(), viewer.user_id)

    # -- Engine.IO sessions, so a poll that reached the wrong replica can say so --------
    def session_opened(self, sid: str) -> None:
        self._sessions.session_opened(sid)

    def session_closed(self, sid: str) -> None:
        self._sessions.session_closed(sid)

    async def session_replica(self, sid: str) -> str | None:
        """The live replica holding an Engine.IO session, if another one does."""
        return await self._sessions.session_replica(sid)

    # -- open sockets, closed when the replica stops -----------------------------------
    def admit(self) -> None:
        """A new socket or event stream: refused (Unavailable, 503) once the replica
        stops, as nothing would close it any more."""
        if self._stopping:
            raise Unavailable(SERVER_STOPPING)

    def track(self, socket: Closable) -> None:
        """An open WebSocket, until `untrack` (once it has closed)."""
        self._sockets.add(socket)

    def untrack(self, socket: Closable) -> None:
        self._sockets.discard(socket)

    @contextlib.contextmanager
    def streaming(self, end: End) -> Iterator[None]:
        """An open event stream (SSE), ended by `end(why)` when the replica stops; one
        opened after that is refused (Unavailable)."""
        self.admit()
        self._streams.add(end)
        try:
            yield
        finally:
            self._streams.discard(end)

    async def close_sockets(self, code: int, message: str) -> None:
        """Every open WebSocket closed with `code` (1001: going away), at once, and
        every event stream ended: their clients reconnect, through the balancer, to a
        replica that is not stopping (EventSource does so by itself)."""
        self._stopping = True
        streams, self._streams = list(self._streams), set()
        for end in streams:
            end(message)
        sockets, self._sockets = list(self._sockets), set()
        await asyncio.gather(
            *(socket.close(code=code, message=close_reason(message)) for socket in sockets),
            return_exceptions=True,
        )

    # -- access ----------------------------------------------------------------------
    def hold(self, principal: Principal, end: End) -> Lease:
        return self._access.hold(principal, end)


class _Behind:
    """An outbox's `on_behind` (`Realtime.pace`): an object with slots, not a closure,
    as every connection that carries replies holds one (`bench_idle`)."""

    __slots__ = ("_attach", "_outbox", "_principal", "_realtime")

    def __init__(
        self, realtime: Realtime, outbox: Outbox, principal: Principal, attach: Attach
    ) -> None:
        self._realtime, self._outbox = realtime, outbox
        self._principal, self._attach = principal, attach

    def __call__(self, event: ReplyEvent, after: int) -> None:
        self._realtime._behind(self._outbox, self._principal, self._attach, event, after)
