"""The raw WebSockets' pings (RAGFlow, Nadoo): one timer for every socket.

aiohttp's `heartbeat` keeps a timer per socket, re-armed as frames come in: under
uvloop about 0.6 KB of every idle socket's memory, measured with it off; one
timer for all gives back half of that (bench/RESULTS.md, "Levers").  Here every
socket waits the same interval between two pings, so the order they were added in
is the order they are due, and one timer over a queue serves them all (as
`socketio_guard._Pings` does for Engine.IO's)::

    add(conn)     an opened connection: its first ping due an interval on; any
                  frame its read loop takes from its client (a pong, a text frame,
                  a ping) clears `conn.unanswered` (`websocket._read`)
    forget()      a connection closed: its entry goes at its turn, or sooner, when
                  the closed ones are most of the queue (churn holds no memory)
    _fire         each connection due, in turn:
                    closed (or closing)          dropped from the queue
                    its last ping not answered,  gone: its transport cut (its read
                    its read loop idle           loop ends, and everything after it)
                    else                         a ping written now (behind what
                                                 the socket still holds, if it is
                                                 backed up), due again

So a client that stops answering is cut one to two intervals after its read loop
last took a frame from it (aiohttp: 1.5 after the last bytes came), unless the
read loop is busy with a frame of its (a pong waiting behind it is not the
client's fault); and every socket that can take a frame gets one at least once
an interval, under every proxy's idle timeout (nginx: 60 s).  A ping waits
behind what the socket holds: a client that cannot read through that within
an interval is taken for gone, as with aiohttp's heartbeat (whose pong had
half an interval).  A read loop stuck answering a client that reads nothing
is not cut here (nor was it by aiohttp's heartbeat, whose close waited for
the unsent frames); the outbox's stall check closes a socket whose events
wait (`stalled_client_s`).  The client's own pings are answered
by the read loop (`websocket.py`).  One `Pings` an application (`PINGS`, made
and closed by its cleanup context in `gateway/app.py`).
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


# Closed connections' entries are swept out once they are more than this and half
# the queue (`forget`).
SWEEP_AFTER = 64


class Pings:
    __slots__ = ("_closed", "_due", "_gone", "_timer", "interval_s")

    def __init__(self, interval_s: float = PING_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._due: deque[tuple[float, Connection]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._gone = 0  # closed connections still in the queue, about
        self._closed = False

    def __len__(self) -> int:
        return len(self._due)

    def add(self, conn: Connection) -> None:
        if self._closed:
            return
        conn.unanswered = False
        loop = asyncio.get_running_loop()
        self._queue(conn, loop.time() + self.interval_s, loop)

    def forget(self) -> None:
        """A connection added here has closed (it leaves the queue at its turn)."""
        self._gone += 1
        if self._gone > SWEEP_AFTER and self._gone * 2 > len(self._due):
            self._due = deque(entry for entry in self._due if _open(entry[1]))
            self._gone = 0

    def close(self) -> None:
        """No more pings (the application is stopping)."""
        self._closed = True
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
                elif self._gone:
                    self._gone -= 1
            except Exception:  # one socket's bug must not stop the others' pings
                log.exception("websocket ping failed", extra={"path": conn.request.path})
                due.append((again, conn))
        if due:
            self._timer = loop.call_at(due[0][0], self._fire, loop)


def _open(conn: Connection) -> bool:
    return conn.phase is Phase.OPEN and not conn.ws.closed


def _ping(conn: Connection) -> bool:
    """One connection's turn: whether it stays in the queue."""
    if not _open(conn):
        return False
    ws = conn.ws
    if conn.unanswered and not conn.busy:
        _cut(conn, "its last ping was not answered")
        return False
    if frames.pingable_now(ws):
        frames.ping_now(ws)
        conn.unanswered = True
    return True


def _cut(conn: Connection, why: str) -> None:
    """Its TCP connection cut: its read loop ends, and everything after it runs."""
    log.info("websocket closed: %s", why, extra={"path": conn.request.path})
    transport = conn.request.transport
    if transport is not None:
        transport.abort()


PINGS = web.AppKey("websocket_pings", Pings)
