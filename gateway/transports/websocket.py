"""Raw WebSocket transport, shared by RAGFlow's and Nadoo's endpoints (docs/PROTOCOLS.md §3, §4).

A connection's life, the same for every flavour::

    handshake   origin refused → 403; no `Upgrade: websocket` → 426 naming the
                proxy lines that drop it
    identity    token from header, cookie or query (`auth.find_token`); a bad one
                → the endpoint's refusal frames, then close 1008; the same when,
                later, the token expires, its key is revoked or its user is
                removed (`gateway/access.py`)
    open        the endpoint joins the connection to its rooms (its own room
                `conn:<id>`, for the replies it asks for, among them if it uses it)
    resume      a reply the client names is followed from where it was
                (`Connection.resume`): its missed events, then live, each once
    frames      text → `endpoint.received`; a `GatewayError` there becomes the
                endpoint's error frame and the connection stays open; anything
                else is a bug: internal-error frame, close 1011
    delivery    events of its rooms → bounded `Outbox` → `endpoint.encode` → text
                frames.  While flow control has not paused the socket's
                writing, what a loop turn queued is encoded and written at the
                turn's end by a callback (no task switch per event, no task per
                idle connection: `_deliver`, `_flush`); while it is paused, a
                pump task, made then and ended once the outbox is empty,
                writes the queue as the client drains it (`_pump`).  A reply the
                client reads slower than the model writes goes on from the
                replay buffer at its pace
                (`Connection.pace`, set by the endpoints that carry replies); a
                client that stops reading until the outbox overflows, or takes
                nothing for `stalled_client_s`, is closed 1013 (it may reconnect)
    limits      a frame over `max_frame_bytes` is closed 1009 by aiohttp; pings
                every `PING_INTERVAL_S` keep proxies' idle timers (nginx: 60 s) fed

The endpoint (the flavour's glue, in `gateway/api/`) never touches aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from gateway import rooms
from gateway.application.keys import ORIGINS, REALTIME, SETTINGS
from gateway.application.realtime import Attach, Attached, Outbox, Overflow, Realtime
from gateway.edge import access, metrics
from gateway.edge.auth import Principal, find_token
from gateway.edge.proxy import upgrade_required
from gateway.edge.throttle import MessageRate
from gateway.errors import (
    WS_INTERNAL_ERROR,
    WS_TRY_AGAIN_LATER,
    AuthError,
    Forbidden,
    GatewayError,
    InternalError,
    PeerError,
)
from gateway.events import Event
from gateway.text import storable
from gateway.transports import websocket_frames as frames

log = logging.getLogger(__name__)

# Below every common proxy idle timeout (nginx: 60 s).
PING_INTERVAL_S = 25.0
# How long a close handshake may take before the TCP connection is cut.
CLOSE_TIMEOUT_S = 2.0
# What ends a connection's read loop (aiohttp has answered a close already).
_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
# Drops in progress (the loop holds tasks only weakly).
_DROPPING: set[asyncio.Task[None]] = set()


class Phase(enum.Enum):
    """A connection's life; only OPEN reads frames and writes events::

    OPENING ──endpoint opened──▶ OPEN ──client left──────────────────────▶ CLOSED
       │                          └──too slow / access ended / a bug──▶ CLOSING ──▶ CLOSED
       └──refused (token, origin, endpoint)─────────────────────────▶ CLOSING ──▶ CLOSED
    """

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """One accepted WebSocket, as an endpoint sees it.

    Most connections are idle nearly all their life, so what each holds is kept
    small (`bench_idle`): slots, no set until a reply is resumed, and the outbox's
    and the lease's callbacks bound methods rather than closures."""

    __slots__ = (
        "endpoint",
        "flushing",
        "id",
        "outbox",
        "phase",
        "principal",
        "pump",
        "rate",
        "realtime",
        "reason_for",
        "request",
        "resuming",
        "state",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        realtime: Realtime,
        request: web.Request,
        endpoint: Endpoint,
        reason_for: Callable[[GatewayError], str],
    ) -> None:
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.request = request
        self.endpoint = endpoint
        # The close reason for a refusal (the flavour's own wording).
        self.reason_for = reason_for
        self.principal: Principal | None = None
        self.realtime = realtime
        self.outbox: Outbox | None = None
        self.phase = Phase.OPENING
        # Per-connection state an endpoint keeps (running task ids, encoder...).
        self.state: dict[str, object] = {}
        # Replies being resumed into the outbox (`resume`), stopped when it closes;
        # made by the first.
        self.resuming: set[asyncio.Task[None]] | None = None
        # A `_flush` of the outbox is due at the end of this loop turn.
        self.flushing = False
        # Writes the outbox while the socket is backed up (`_pump`); only then.
        self.pump: asyncio.Task[None] | None = None
        # How fast the client may send (GATEWAY_MAX_MESSAGES_PER_S).
        self.rate = MessageRate(request.app[SETTINGS].max_messages_per_s)

    @property
    def room(self) -> str:
        """The connection's own room, for the replies it asks for (an endpoint that
        uses it joins it when opened)."""
        return rooms.connection(self.id)

    @property
    def query(self) -> dict[str, str]:
        """The handshake URL's query (a name given twice: its first value), parsed
        anew at each use: aiohttp's `request.query` would keep its parsed copy on
        the request for the socket's life (about 0.5 KB; the raw URL stays)."""
        found: dict[str, str] = {}
        for name, value in parse_qsl(self.request.rel_url.raw_query_string, True):
            found.setdefault(name, value)
        return found

    @property
    def user_id(self) -> str:
        if self.principal is None:
            raise RuntimeError("Connection.user_id read before authentication")
        return self.principal.user_id

    async def join(self, room: str) -> None:
        """Into `room`, here and (once subscribed) on every replica."""
        if self.outbox is not None:
            await self.realtime.join(self.outbox, room)

    def publish(self, rooms: list[str], event: Event) -> None:
        """Publish to rooms (presence and broadcasts)."""
        self.realtime.publish(rooms, event)

    @contextlib.contextmanager
    def holding(self, message_ids: list[str]) -> Iterator[None]:
        """While resumes are set up: the rooms' copies of these replies are held back."""
        if self.outbox is None:
            yield
            return
        with self.outbox.held(message_ids):
            yield

    def resume(self, attached: Attached, prime: Callable[[Event], object]) -> None:
        """A reply resumed on this connection: `prime` (the endpoint's encoder, its
        frames thrown away) is fed what the client already has, so per-reply state
        (Nadoo's index, RAGFlow's running text) goes on from there; then what
        followed goes out through the writer, in order, each once."""
        if self.outbox is None:
            attached.close()
            return
        for event in attached.prefix:
            prime(event)
        if self.resuming is None:
            self.resuming = set()
        self.resuming.add(self.realtime.resume(self.outbox, attached))

    def pace(self, attach: Attach) -> None:
        """Replies of the connection's user it falls behind on are fed to it from the
        replay buffer as it reads (`Realtime.pace`), not dropped."""
        if self.outbox is not None and self.principal is not None:
            self.realtime.pace(self.outbox, self.principal, attach)

    async def send(self, frame: str) -> None:
        """One text frame now (replies to the client's own frames: pong, errors)."""
        if not self.ws.closed:
            await self.ws.send_str(frame)

    # What the outbox and the lease call back.
    def _arrived(self, event: Event) -> bool:
        return _deliver(self, event)

    def _overflowed(self) -> None:
        _too_slow(self)

    def _access_ended(self, why: str) -> None:
        _end_access(self, AuthError(why))


class Endpoint(Protocol):
    """A flavour's WebSocket route: what the transport calls, in order."""

    def refused(self, error: GatewayError) -> list[str]:
        """Frames sent before closing a connection refused at open (bad token...)."""
        ...

    async def opened(self, conn: Connection) -> None:
        """Authenticated: join rooms, greet.  Raising refuses the connection."""
        ...

    async def received(self, conn: Connection, text: str) -> None:
        """One text frame from the client."""
        ...

    def failed(self, error: GatewayError) -> list[str]:
        """Frames for a client frame that could not be carried out."""
        ...

    def encode(self, conn: Connection, event: Event) -> list[str]:
        """Frames for an event of the connection's rooms."""
        ...

    async def closed(self, conn: Connection) -> None:
        """The connection ended (say goodbye to the others in its rooms)."""
        ...


async def serve(
    request: web.Request,
    endpoint: Endpoint,
    *,
    flavour: str,
    authenticate: bool = True,
    reason_for: Callable[[GatewayError], str] = lambda error: error.message,
) -> web.StreamResponse:
    realtime = request.app[REALTIME]
    if not request.app[ORIGINS].allows(request.headers.get("Origin"), request.host):
        raise Forbidden(f"Origin {request.headers.get('Origin')} is not allowed")
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=PING_INTERVAL_S,
        max_msg_size=settings.max_frame_bytes,
        # permessage-deflate keeps two zlib contexts per connection, about 120 KB,
        # for frames of a few dozen bytes (bench/bench_deflate.py): off by default.
        compress=settings.websocket_compression,
    )
    if not ws.can_prepare(request).ok:
        return upgrade_required(request)
    await ws.prepare(request)
    conn = Connection(ws, realtime, request, endpoint, reason_for)
    realtime.track(ws)
    # The socket's life is awaited from here, `_read` directly: every coroutine in
    # the chain keeps its frame for as long as the socket is open (`bench_idle`).
    try:
        if not await _open(conn, authenticate):
            return ws
        counted = access.connection_opened(
            "websocket", flavour, conn.principal.user_id if conn.principal else None
        )
        lease = None
        if conn.principal is not None:
            lease = realtime.hold(conn.principal, conn._access_ended)
        try:
            await _read(conn)
        finally:
            if lease is not None:
                lease.release()
            await _closed(conn)
            counted()
    finally:
        realtime.untrack(ws)
    return ws


async def _open(conn: Connection, authenticate: bool) -> bool:
    """Authenticated, subscribed and opened by its endpoint (True); else refused and
    closed (False)."""
    realtime, request = conn.realtime, conn.request
    try:
        if authenticate:
            token = find_token(request.headers, request.cookies, conn.query)
            conn.principal = await realtime.authenticate(token)
        conn.outbox = realtime.subscribe((), on_overflow=conn._overflowed, deliver=conn._arrived)
        await conn.endpoint.opened(conn)
    except GatewayError as exc:
        if conn.outbox is not None:
            realtime.unsubscribe(conn.outbox)
        await _refuse(conn, exc)
        conn.phase = Phase.CLOSED
        return False
    except ConnectionError:
        # Its client went away while it was greeted: what the endpoint had set up
        # (rooms, its seat) is undone.
        conn.phase = Phase.CLOSING
        await _closed(conn)
        return False
    except Exception:
        # A bug in `opened`: as a bug in handling a frame, with what it had set up
        # undone (left to the error middleware, its HTTP 500 would be written into
        # the upgraded stream).
        log.exception("websocket endpoint failed", extra={"path": request.path})
        conn.phase = Phase.CLOSING
        for frame in conn.endpoint.failed(InternalError()):
            await conn.send(frame)
        await conn.ws.close(code=WS_INTERNAL_ERROR, message=b"Internal server error")
        await _closed(conn)
        return False
    except BaseException:  # cancelled (the replica stopping): undone, then on
        await _closed(conn)
        raise
    conn.phase = Phase.OPEN
    if conn.outbox.overflowed:
        _too_slow(conn)  # the rooms brought more while it opened than its outbox holds
    elif len(conn.outbox):
        _writer_for(conn)  # what the rooms brought while it opened
    return True


async def _closed(conn: Connection) -> None:
    """Its client left or it was closed: nothing more runs for it."""
    for task in conn.resuming or ():
        task.cancel()
    if conn.outbox is not None:
        conn.realtime.unsubscribe(conn.outbox)
    if (pump := conn.pump) is not None:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    with contextlib.suppress(Exception):
        await conn.endpoint.closed(conn)
    conn.phase = Phase.CLOSED


async def _read(conn: Connection) -> None:
    endpoint = conn.endpoint
    # `receive()` itself rather than `async for`: the iterator's frame would be
    # kept for the socket's life (about 0.2 KB).
    while (msg := await conn.ws.receive()).type not in _ENDS:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not conn.rate.allow():
            # Dropped; said at most once a second, in the flavour's own error.
            if conn.rate.tell():
                for frame in endpoint.failed(conn.rate.error()):
                    await conn.send(frame)
            continue
        if msg.type == WSMsgType.TEXT:
            try:
                await endpoint.received(conn, msg.data)
            except GatewayError as exc:
                for frame in endpoint.failed(exc):
                    await conn.send(frame)
            except Exception:
                log.exception("websocket endpoint failed", extra={"path": conn.request.path})
                conn.phase = Phase.CLOSING
                for frame in endpoint.failed(InternalError()):
                    await conn.send(frame)
                await conn.ws.close(code=WS_INTERNAL_ERROR, message=b"Internal server error")
                return
        elif msg.type == WSMsgType.BINARY:
            error = PeerError("Binary frames are not accepted; send JSON as text")
            for frame in endpoint.failed(error):
                await conn.send(frame)
        # ERROR and CLOSE end the loop; aiohttp has already answered them
        # (1009 for a frame over max_msg_size).


async def _send(conn: Connection, frame: str) -> None:
    """One frame; one that cannot be encoded as UTF-8 (a lone surrogate some other
    client or a model server slipped in) goes without what cannot be encoded,
    rather than end the writer and silence the connection for good."""
    try:
        await conn.ws.send_str(frame)
    except UnicodeEncodeError:
        await conn.ws.send_str(storable(frame))


def _deliver(conn: Connection, event: Event) -> bool:
    """The outbox's first event after a quiet spell (it calls this when nothing is
    queued or in flight): queued (False), so the outbox's rules hold for it
    (merging, its bounds, a resume's divert), and written from there at the end of
    this loop turn by `_flush` — or, when the socket is backed up, by the pump."""
    if conn.phase is Phase.OPENING:
        return False  # written once it is open
    if conn.phase is not Phase.OPEN or conn.ws.closed:
        return True  # closing: nothing more is sent
    _writer_for(conn)
    return False


def _writer_for(conn: Connection) -> None:
    """What writes the outbox's queue: nothing if a flush or the pump will; a flush
    at the end of the turn while the socket can take frames; else the pump."""
    if conn.flushing or conn.pump is not None or conn.outbox is None or conn.outbox.closed:
        return
    if frames.writable_now(conn.ws):
        conn.flushing = True
        asyncio.get_running_loop().call_soon(_flush, conn)
    else:
        conn.pump = asyncio.get_running_loop().create_task(_pump(conn, conn.outbox))


def _flush(conn: Connection) -> None:
    """The outbox's queue written now, without a task: the events the turn brought,
    encoded and written together (written as each came, the socket's sends would
    wake the client in the middle of the turn: `bench_ab --flavour nadoo-ws`
    measured 5 % more CPU per chunk, all of it the kernel's).  Backed up meanwhile:
    the pump takes over."""
    conn.flushing = False
    outbox = conn.outbox
    if conn.phase is not Phase.OPEN or outbox is None or conn.pump is not None:
        return
    if not frames.writable_now(conn.ws):
        _writer_for(conn)
        return
    events, encode = outbox.take(), conn.endpoint.encode
    try:
        for event in events:
            for frame in encode(conn, event):
                frames.write_now(conn.ws, frame)
    except ConnectionError:
        return  # the client went away mid-write (or the socket closed); the reader sees it
    except Exception:
        # A bug in an encoder must not reach the loop (or stall the connection).
        log.exception("websocket delivery failed", extra={"path": conn.request.path})
        _close_broken(conn)
        return
    finally:
        outbox.done()
    metrics.HOT.delivered_websocket += len(events)


async def _pump(conn: Connection, outbox: Outbox) -> None:
    """The slow path: the outbox's queue written with `send_str`, which waits for the
    client to read whenever the socket is paused at one of aiohttp's checks (every
    256 KiB written); over once the outbox is empty (the next event is flushed
    again)."""
    try:
        while conn.phase is Phase.OPEN and (events := await outbox.batch()):
            for event in events:
                for frame in conn.endpoint.encode(conn, event):
                    await _send(conn, frame)
            metrics.HOT.delivered_websocket += len(events)
            outbox.done()
            if not len(outbox):
                return
    except Overflow:
        pass
    except ConnectionError:
        pass  # the client went away mid-write (aiohttp: "Connection lost"); the reader sees it
    except Exception:
        log.exception("websocket delivery failed", extra={"path": conn.request.path})
        _close_broken(conn)
    finally:
        if conn.pump is asyncio.current_task():
            conn.pump = None


async def _refuse(conn: Connection, error: GatewayError) -> None:
    conn.phase = Phase.CLOSING
    for frame in conn.endpoint.refused(error):
        await conn.send(frame)
    reason = conn.reason_for(error)
    # Close reasons are at most 123 bytes (RFC 6455 §5.5).
    await conn.ws.close(code=error.ws_close_code, message=reason.encode()[:123])


def _end_access(conn: Connection, error: AuthError) -> None:
    """The token expired, its key was revoked or its user removed: the flavour's
    refusal, as at open, then close 1008."""
    if conn.phase is not Phase.OPEN:
        return
    log.info(
        "websocket closed: access ended", extra={"path": conn.request.path, "why": error.message}
    )
    _closing(conn, _refuse(conn, error))


def _close_broken(conn: Connection) -> None:
    """Delivery failed (a bug in an encoder): close 1011, the code a bug in handling
    the client's own frame ends with (the client reconnects and reloads)."""
    if conn.phase is not Phase.OPEN:
        return
    _closing(conn, _drop(conn, WS_INTERNAL_ERROR, b"Internal server error"))


def _too_slow(conn: Connection) -> None:
    if conn.phase is not Phase.OPEN:
        return
    log.warning(
        "slow websocket dropped: it fell behind",
        extra={"path": conn.request.path, "user": conn.principal and conn.principal.user_id},
    )
    _closing(conn, _drop(conn, WS_TRY_AGAIN_LATER, b"Client too slow; reconnect"))


def _closing(conn: Connection, close: Coroutine[None, None, None]) -> None:
    """An open connection closes, from a callback (it cannot await): CLOSING at once,
    so nothing more is sent, and `close` runs in a task of its own."""
    conn.phase = Phase.CLOSING
    task = asyncio.get_running_loop().create_task(close)
    _DROPPING.add(task)
    task.add_done_callback(_DROPPING.discard)


async def _drop(conn: Connection, code: int, reason: bytes) -> None:
    # A client that does not read (or is stuck) will not answer the close handshake.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.ws.close(code=code, message=reason), CLOSE_TIMEOUT_S)
    transport = conn.request.transport
    if transport is not None:
        transport.abort()
