"""Engine.IO's per-socket queue: how events reach one Socket.IO socket, and how it is cut.

Engine.IO's socket object (its `queue`, `closed`, `upgraded`, `close(abort=)`) is
python-engineio's, not a documented API; every use of it is in this module.

    enqueue     an event encoded (`SocketEncoder`, python-socketio's `Packet`)
                straight into the socket's queue: what `AsyncServer.emit` would
                queue, without its task per recipient, and encoded once for all
                the sockets that get it (`ENCODED`; `NUMBERED` for the sockets
                that asked for each envelope's `seq`)
    room        the queue is unbounded, so `has_room` says no once it holds
                `MAX_QUEUED_PACKETS`; the transport's pump then waits in
                `drained` while its outbox takes (and merges) what follows
    cut         `abort` closes at the Engine.IO level (no Socket.IO DISCONNECT,
                after which socket.io-client would not reconnect by itself) and
                aborts the TCP connection a stuck client is not reading;
                `close_all` does it to every session of a stopping replica
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import engineio
import socketio

from gateway.edge.metrics import HOT
from gateway.events import Event
from gateway.flavours.openwebui import SocketEncoder

EVENT = socketio.packet.EVENT
MESSAGE = engineio.packet.MESSAGE
# Packets allowed in Engine.IO's queue of one socket before the pump waits.
MAX_QUEUED_PACKETS = 16
# How often a waiting pump looks whether it should give up meanwhile.
DRAIN_TICK_S = 0.25


def engine_socket(sio: socketio.AsyncServer, sid: str) -> Any:
    """The Engine.IO socket under a Socket.IO sid of the default namespace."""
    return sio.eio.sockets.get(sio.manager.eio_sid_from_sid(sid, "/"))


def has_room(sock: Any) -> bool:
    return sock is not None and not sock.closed and sock.queue.qsize() < MAX_QUEUED_PACKETS


class _EncodedOnce:
    """An event's Socket.IO packets, encoded once however many sockets get it: the
    hub hands the same event object to every socket of the user (every tab), one
    after another, so remembering the last one is enough."""

    __slots__ = ("encoder", "encodes", "event", "packets")

    def __init__(self, encoder: SocketEncoder) -> None:
        self.encoder = encoder  # stateless: one for every socket
        self.event: Event | None = None
        self.packets: list[str] = []
        self.encodes = 0  # for tests and benches: how many times an event was encoded

    def __call__(self, event: Event) -> list[str]:
        if event is not self.event:
            self.encodes += 1
            # Our payloads are JSON, never binary: no scan for bytes.
            self.packets = [
                socketio.packet.Packet(EVENT, data=[name, payload], binary=False).encode()
                for name, payload in self.encoder.encode(event)
            ]
            self.event = event
        return self.packets


ENCODED = _EncodedOnce(SocketEncoder())
NUMBERED = _EncodedOnce(SocketEncoder(seq=True))


def enqueue(sock: Any, event: Event, numbered: bool = False) -> None:
    put = sock.queue.put_nowait
    HOT.delivered_socketio += 1
    for data in (NUMBERED if numbered else ENCODED)(event):
        put(engineio.packet.Packet(MESSAGE, data=data))


async def drained(sock: Any, give_up: Callable[[], bool]) -> bool:
    """Wait while the queue holds MAX_QUEUED_PACKETS or more; False once `give_up()`
    or the socket closed."""
    queue = getattr(sock, "queue", None)
    while queue is not None and queue.qsize() >= MAX_QUEUED_PACKETS:
        if give_up() or sock.closed:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), DRAIN_TICK_S)
    return True


def end_long_poll(sock: Any) -> None:
    """A long-poll GET may still wait on a closed session's queue; Engine.IO would hold
    it until the next ping (25 s). A NOOP ends it now."""
    if sock is not None and not sock.upgraded:
        sock.queue.put_nowait(engineio.packet.Packet(engineio.packet.NOOP))


async def close_all(
    sio: socketio.AsyncServer, tcp_of: Callable[[Any], asyncio.Transport | None], wait_s: float
) -> None:
    """Every Engine.IO session of a stopping replica closed so that its client
    reconnects (elsewhere): a CLOSE packet (a polling client gets it at its next
    poll and reconnects), then, `wait_s` later, the TCP connection of each that
    is still open cut (a websocket client reconnects on a transport close; a
    Socket.IO DISCONNECT would stop it from reconnecting at all)."""
    socks = [sock for sock in list(sio.eio.sockets.values()) if not sock.closed]
    for sock in socks:
        with contextlib.suppress(Exception):
            await sock.close(wait=False)
    cut = [tcp for sock in socks if (tcp := tcp_of(sock)) is not None and not tcp.is_closing()]
    if cut:
        await asyncio.sleep(wait_s)
        for tcp in cut:
            tcp.abort()


async def abort(sock: Any, tcp: asyncio.Transport | None) -> None:
    """Close the session without a CLOSE packet queued behind what the client is not
    reading, and cut its TCP connection."""
    if sock is not None and not sock.closed:
        await sock.close(wait=False, abort=True)
    if tcp is not None:
        tcp.abort()
