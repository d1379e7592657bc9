"""The raw WebSockets' pings (RAGFlow, Nadoo): one timer for every socket.

aiohttp's `heartbeat` keeps a timer per socket, re-armed as frames come in: under
uvloop about 0.6 KB of every idle socket's memory (bench/RESULTS.md).  Here every
socket waits the same interval between two pings, so the order they were added in
is the order they are due, and one timer over a queue serves them all (as
`socketio_guard._Pings` does for Engine.IO's)::

    add(conn)     an opened connection: its first ping due an interval on;
                  any frame from its client (a pong, a text frame, a ping) since
                  its last ping clears `conn.unanswered` (`websocket._read`)
    _fire         each connection due, in turn:
                    closed (or closing)          dropped from the queue
                    its last ping not answered   gone: its transport cut (its read
                                                 loop ends, and everything after it)
                    backed up                    no ping (its writer's stall check
                                                 watches it), due again
                    else                         a ping written now, due again

So a client that stops answering is cut one to two intervals after it was last
heard from (aiohttp: 1.5), and every open socket gets a frame at least once an
interval, under every proxy's idle timeout (nginx: 60 s).  The client's own pings
are answered by the read loop (`websocket.py`).  One `Pings` an application
(`PINGS`, made and closed by its cleanup context in `gateway/app.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.transports import websocket_frames as frames
from gateway.transports.websocket_delivery import Phase

if TYPE_CHECKING:
    from gateway.transports.websocket import Connection

log = logging.getLogger(__name__)

# Below every common proxy idle timeout (nginx: 60 s).
PING_INTERVAL_S = 25.0
# A ping this close to its time is sent with the ones due (a timer may fire that early).
PING_EARLY_S = 0.002


class Pings:
    __slots__ = ("_due", "_timer", "interval_s")

    def __init__(self, interval_s: float = PING_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._due: deque[tuple[float, Connection]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, conn: Connection) -> None:
        conn.unanswered = False
        loop = asyncio.get_running_loop()
        self._queue(conn, loop.time() + self.interval_s, loop)

    def close(self) -> None:
        """No more pings (the application is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def _queue(self, conn: Connection, due: float, loop: asyncio.AbstractEventLoop) -> None:
        self._due.append((due, conn))
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due, now = self._due, loop.time()
        again = now + self.interval_s
        while due and due[0][0] <= now + PING_EARLY_S:
            conn = due.popleft()[1]
            try:
                if _ping(conn):
                    due.append((again, conn))
            except Exception:  # one socket's bug must not stop the others' pings
                log.exception("websocket ping failed", extra={"path": conn.request.path})
        if due:
            self._timer = loop.call_at(due[0][0], self._fire, loop)


def _ping(conn: Connection) -> bool:
    """One connection's turn: whether it stays in the queue."""
    ws = conn.ws
    if ws.closed or conn.phase is not Phase.OPEN:
        return False
    if conn.unanswered:
        path = conn.request.path
        log.info("websocket closed: its last ping was not answered", extra={"path": path})
        transport = conn.request.transport
        if transport is not None:
            transport.abort()
        return False
    if frames.writable_now(ws):
        frames.ping_now(ws)
        conn.unanswered = True
    return True


PINGS = web.AppKey("websocket_pings", Pings)
