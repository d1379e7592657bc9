"""How events reach one Socket.IO socket, and how delivery ends it: the part of
the transport (`socketio.py`) that writes.

Theory of operation::

    rooms ─▶ Outbox ──deliver(event)──▶ Engine.IO's queue has room?
                                          yes: encoded into it now (the fast path:
                                               no task switch per event,
                                               `socketio_queue.py`)
                                          no:  the outbox keeps it (deltas merged
                                               there) and a pump task, made then,
                                               feeds the queue as it drains; over
                                               once the outbox is empty, so an
                                               idle socket holds no task

    ends      the outbox overflowed (the client stopped reading): the socket is
              closed at the Engine.IO level, so socket.io-client reconnects by
              itself; a bug in the pump closes it alike; `release` undoes what
              joining a room made (outbox, seat, lease, followers, pump)

A reply that outgrows the outbox is fed from the replay buffer as the socket
reads (`Realtime.pace`, set up when it joins), so a client that reads as fast
as its network allows is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.application.realtime import Lease, Outbox, Overflow, Realtime
from gateway.commands import Resume
from gateway.edge import access
from gateway.edge.auth import Principal
from gateway.edge.throttle import MessageRate
from gateway.events import Event
from gateway.transports import socketio_queue as engine

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Socket:
    """One Socket.IO connection's state, from its CONNECT to its disconnect."""

    sid: str
    principal: Principal | None = None
    outbox: Outbox | None = None
    # Only while the outbox holds what the fast path could not take.
    pump: asyncio.Task[None] | None = None
    lease: Lease | None = None
    # Engine.IO's socket (its queue is what backpressure watches) and, for the
    # websocket transport, the TCP transport to abort when the client is stuck.
    eio_socket: Any = None
    tcp: asyncio.Transport | None = None
    # Replies being resumed into the outbox, by message id.
    resuming: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # A resume the handshake asked for (`auth.resume`), done once it joins.
    handshake_resume: Resume | None = None
    # Each envelope of a reply carries its `seq` (`auth.seq: true` in the handshake).
    numbered: bool = False
    # Counted and logged while open (`edge/access.py`); None until its connect ends.
    opened: access.OpenConnection | None = None
    # How fast the client may send events (GATEWAY_MAX_MESSAGES_PER_S).
    rate: MessageRate = field(default_factory=lambda: MessageRate(None))


class Delivery:
    """The writing of events into the transport's sockets.

    `upgrades` is the front door's: while a polling session upgrades, its
    websocket's TCP transport, the one to cut when that client is stuck."""

    def __init__(self, realtime: Realtime, upgrades: Mapping[str, asyncio.Transport]) -> None:
        self._realtime = realtime
        self._upgrades = upgrades
        # Closes in progress (a task the loop holds only weakly must be kept).
        self._closing: set[asyncio.Task[Any]] = set()

    def subscribe(self, conn: Socket, rooms: list[str]) -> Outbox:
        """The socket's outbox on `rooms`, its events delivered here."""
        return self._realtime.subscribe(
            rooms,
            on_overflow=lambda: self.overflowed(conn),
            deliver=lambda event: self.deliver(conn, event),
        )

    def deliver(self, conn: Socket, event: Event) -> bool:
        """The fast path: into Engine.IO's queue now, unless it is backed up; then the
        outbox queues the event, and the pump starts."""
        if engine.has_room(conn.eio_socket):
            engine.enqueue(conn.eio_socket, event, conn.numbered)
            return True
        if conn.pump is None and conn.outbox is not None:
            conn.pump = asyncio.get_running_loop().create_task(self._pump(conn, conn.outbox))
        return False

    def release(self, conn: Socket) -> None:
        """What joining made, undone: the socket receives nothing until it joins again."""
        if conn.lease is not None:
            conn.lease.release()
            conn.lease = None
        if conn.principal is not None:
            self._realtime.unseat(conn.sid)
        for task in conn.resuming.values():
            task.cancel()
        conn.resuming = {}
        if conn.outbox is not None:
            self._realtime.unsubscribe(conn.outbox)
        if conn.pump is not None and conn.pump is not asyncio.current_task():
            conn.pump.cancel()
        conn.outbox, conn.pump = None, None

    def overflowed(self, conn: Socket) -> None:
        user = conn.principal.user_id if conn.principal else None
        log.warning("slow socket dropped: it fell behind", extra={"sid": conn.sid, "user": user})
        self.in_background(self.close_transport(conn))

    async def close_transport(self, conn: Socket) -> None:
        """Close at the Engine.IO level so the client sees a transport close and reconnects."""
        self.release(conn)
        sock = conn.eio_socket
        tcp = conn.tcp or (self._upgrades.get(sock.sid) if sock is not None else None)
        await engine.abort(sock, tcp)

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """A close or disconnect run from a callback, kept until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _pump(self, conn: Socket, outbox: Outbox) -> None:
        """The slow path: what the fast path could not take, in order, as the queue
        drains; over once the outbox is empty (the next event tries the fast path)."""
        try:
            while events := await outbox.batch():
                sock = conn.eio_socket
                if sock is None or sock.closed:
                    return
                for event in events:  # into Engine.IO's queue as it drains (LIMITS.md)
                    if not await engine.drained(sock, lambda: outbox.overflowed or outbox.closed):
                        return
                    engine.enqueue(sock, event, conn.numbered)
                outbox.done()
                if not len(outbox):
                    return
        except Overflow:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("socket pump failed", extra={"sid": conn.sid})
            await self.close_transport(conn)
        finally:
            if conn.pump is asyncio.current_task():
                conn.pump = None
