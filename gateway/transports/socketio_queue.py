"""Engine.IO's per-socket queue: how events reach one Socket.IO socket, and how it is cut.

Engine.IO's socket object (its `queue`, `closed`, `upgraded`, `close(abort=)`) is
python-engineio's, not a documented API; every use of it is in this module.

    enqueue     an event encoded (`SocketEncoder`, python-socketio's `Packet`)
                straight into the socket's queue: what `AsyncServer.emit` would
                queue, without its task per recipient, and encoded once for all
                the sockets that get it (`ENCODED`; `NUMBERED` for the sockets
                that asked for each envelope's `seq`).  A delta's packet, the
                one of nearly every event, is written by orjson
                (`jsonwire.plain`): the same JSON, its non-ASCII text as is
                rather than `\\u`-escaped (as on every other wire of the
                gateway)
    room        the queue is unbounded, so `has_room` says no once it holds
                `MAX_QUEUED_PACKETS`; the transport's pump then waits in
                `drained` while its outbox takes (and merges) what follows
    queue       `PacketQueue`, what each Engine.IO socket queues in (Engine.IO's
                server makes it through `create_queue`): asyncio.Queue's
                behaviour as Engine.IO uses it, without its four deques and its
                Event made up front for every socket, most of them idle
    cut         `abort` closes at the Engine.IO level (no Socket.IO DISCONNECT,
                after which socket.io-client would not reconnect by itself) and
                aborts the TCP connection a stuck client is not reading;
                `close_all` does it to every session of a stopping replica
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import engineio
import socketio

from gateway import jsonwire
from gateway.edge.metrics import HOT
from gateway.events import Event, ReasoningDelta, TextDelta
from gateway.flavours.openwebui import SocketEncoder

EVENT = socketio.packet.EVENT
MESSAGE = engineio.packet.MESSAGE
# Packets allowed in Engine.IO's queue of one socket before the pump waits.
MAX_QUEUED_PACKETS = 16
# How often a waiting pump looks whether it should give up meanwhile.
DRAIN_TICK_S = 0.25


class PacketQueue:
    """An unbounded FIFO queue with asyncio.Queue's methods that Engine.IO and this
    module call (`put`, `put_nowait`, `get`, `get_nowait`, `task_done`, `join`,
    `qsize`, `empty`) and their behaviour, in about a tenth of its memory: the deque
    is made by the first packet and let go once drained, and a waiter's future
    only while one waits.  Engine.IO has one consumer per socket (its writer, or a
    long-poll request); more are served in turn, and a cancelled `get` (a poll
    that timed out) takes nothing."""

    __slots__ = ("_answers", "_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: deque[Any] | tuple[()] = ()
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._answers = 0

    def qsize(self) -> int:
        return len(self._items)

    @property
    def answer_chars(self) -> int:
        """The length of the queued packets' data (characters of text, bytes of
        binary) but the Socket.IO events': answers to the client (acks, refusals),
        which only its own packets provoke (`socketio_engine._Socket.send`)."""
        return self._answers

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if not isinstance(items, deque):
            items = self._items = deque()
        items.append(item)
        self._answers += _answer_size(item)
        self._unfinished += 1
        if self._getters:
            _wake_one(self._getters)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        assert isinstance(items, deque)
        item = items.popleft()
        if not items:
            self._items = ()
            self._answers = 0
        else:
            self._answers -= _answer_size(item)
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                # Woken and cancelled at once: the packet goes to the next getter.
                if getter.done() and not getter.cancelled() and self._items:
                    _wake_one(self._getters)
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if not self._getters:
                    self._getters = None
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished == 0:
            return
        joiner = asyncio.get_running_loop().create_future()
        if self._joiners is None:
            self._joiners = []
        self._joiners.append(joiner)
        try:
            await joiner
        finally:
            if self._joiners is not None:
                with contextlib.suppress(ValueError):
                    self._joiners.remove(joiner)


def _answer_size(packet: Any) -> int:
    """The length of a packet's data, 0 for a Socket.IO event's (`2…`) and for what
    has none (a ping, a session's end)."""
    data = getattr(packet, "data", None)
    if isinstance(data, str):
        return 0 if data.startswith("2") else len(data)
    return len(data) if isinstance(data, bytes) else 0


def _wake_one(getters: list[asyncio.Future[None]]) -> None:
    for getter in getters:
        if not getter.done():
            getter.set_result(None)
            return


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
            plain = type(event) in _DELTAS
            self.packets = [
                _packet(name, payload, plain) for name, payload in self.encoder.encode(event)
            ]
            self.event = event
        return self.packets


# Events whose envelopes hold only strings, integers and None (`jsonwire.plain`).
_DELTAS = frozenset({TextDelta, ReasoningDelta})


def _packet(name: str, payload: Any, plain: bool) -> str:
    """A Socket.IO EVENT packet in the default namespace, `2["name",{…}]`."""
    if plain and (text := jsonwire.plain([name, payload])) is not None:
        return "2" + text
    # Our payloads are JSON, never binary: no scan for bytes.  (python-socketio's
    # `json` escapes what is not ASCII: a lone surrogate travels as `\ud83d`.)
    encoded: str = socketio.packet.Packet(EVENT, data=[name, payload], binary=False).encode()
    return encoded


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
    """Every Engine.IO session of a stopping replica ended so that its client
    reconnects (elsewhere), whichever client it is: no CLOSE packet (python-engineio's
    client takes one for "the server is done with you" and never reconnects; a
    Socket.IO DISCONNECT would stop every client from reconnecting), but the
    session closed: a long poll waiting is ended at once (a NOOP) and the next
    poll is refused (400), a websocket's TCP connection is cut `wait_s` later
    (what it had queued goes out meanwhile); each client reconnects on that
    transport error, as on any lost connection."""
    socks = [sock for sock in list(sio.eio.sockets.values()) if not sock.closed]
    cut = [tcp for sock in socks if (tcp := tcp_of(sock)) is not None and not tcp.is_closing()]
    for sock in socks:
        with contextlib.suppress(Exception):
            await sock.close(wait=False, abort=True)
        end_long_poll(sock)
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
