"""The raw WebSockets' pings (RAGFlow, Nadoo): one timer for every socket.

aiohttp's `heartbeat` keeps a timer per socket, re-armed as frames come in: under
uvloop about 0.6 KB of every idle socket's memory, measured with it off; one
timer for all gives back half of that (bench/RESULTS.md, "Levers").  Here every
socket waits the same interval between two pings, so one timer over a queue
serves them all (`due.py`, as for Engine.IO's)::

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

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.transports import websocket_frames as frames
from gateway.transports.due import DueQueue
from gateway.transports.websocket_delivery import Phase

if TYPE_CHECKING:
    from gateway.transports.websocket import Connection

log = logging.getLogger(__name__)

# Below every common proxy idle timeout (nginx: 60 s).
PING_INTERVAL_S = 25.0


# Closed connections' entries are swept out once they are more than this and half
# the queue (`forget`).
SWEEP_AFTER = 64


class Pings(DueQueue["Connection"]):
    __slots__ = ("_closed", "_gone")

    def __init__(self, interval_s: float = PING_INTERVAL_S) -> None:
        super().__init__(interval_s, self._turn, "websocket ping")
        self._gone = 0  # closed connections still in the queue, about
        self._closed = False

    def add(self, conn: Connection) -> None:
        if self._closed:
            return
        conn.unanswered = False
        super().add(conn)

    def forget(self) -> None:
        """A connection added here has closed (it leaves the queue at its turn)."""
        self._gone += 1
        if self._gone > SWEEP_AFTER and self._gone * 2 > len(self):
            self.keep(_open)
            self._gone = 0

    def close(self) -> None:
        """No more pings (the application is stopping)."""
        self._closed = True
        super().close()

    def _turn(self, conn: Connection) -> bool:
        try:
            kept = _ping(conn)
        except Exception:  # queued again: one bug must not leave it never pinged
            log.exception("websocket ping failed", extra={"path": conn.request.path})
            return True
        if not kept and self._gone:
            self._gone -= 1
        return kept


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
