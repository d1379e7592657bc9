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
                frames, written at the end of the loop turn, or by a pump while
                the socket is backed up (`websocket_delivery.py`).  A reply the
                client reads slower than the model writes goes on from the
                replay buffer at its pace (`Connection.pace`, set by the
                endpoints that carry replies); a client that stops reading
                until the outbox overflows, or takes nothing for
                `stalled_client_s`, is closed 1013 (it may reconnect)
    limits      every frame (pings and pongs too) counts against the connection's
                message rate; one past it is dropped, and a connection that
                floods far past it is cut off (1008, `MessageRate.flooding`); a
                frame over `max_frame_bytes` is closed 1009 by aiohttp; a ping
                every `PING_INTERVAL_S` keeps proxies' idle timers (nginx: 60 s)
                fed, and a client that does not answer it is cut
                (`websocket_pings.py`, one timer for every socket)

The endpoint (the flavour's glue, in `gateway/api/`) never touches aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from gateway import rooms
from gateway.application.keys import ORIGINS, REALTIME, SETTINGS
from gateway.application.realtime import Attach, Attached, Realtime
from gateway.edge import access
from gateway.edge.auth import find_token
from gateway.edge.connections import EveryInterval
from gateway.edge.proxy import upgrade_required
from gateway.edge.throttle import FRAMES_PER_TURN, MessageRate
from gateway.errors import (
    CLIENT_GONE,
    WS_INTERNAL_ERROR,
    AuthError,
    Forbidden,
    GatewayError,
    InternalError,
    PeerError,
)
from gateway.events import Event
from gateway.text import close_reason
from gateway.transports.websocket_delivery import CLOSE_TIMEOUT_S, Delivering, Phase
from gateway.transports.websocket_pings import PINGS

__all__ = ["Connection", "Endpoint", "Phase", "serve"]

log = logging.getLogger(__name__)

# What ends a connection's read loop (aiohttp has answered a close already).
_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


class Connection(Delivering):
    """One accepted WebSocket, as an endpoint sees it (how its events are written:
    `Delivering`).

    Most connections are idle nearly all their life, so what each holds is kept
    small (`bench_idle`): slots, no set until a reply is resumed, and the outbox's
    and the lease's callbacks bound methods rather than closures."""

    __slots__ = (
        "busy",
        "id",
        "rate",
        "realtime",
        "reason_for",
        "resuming",
        "state",
        "unanswered",
    )
    endpoint: Endpoint

    def __init__(
        self,
        ws: web.WebSocketResponse,
        realtime: Realtime,
        request: web.Request,
        endpoint: Endpoint,
        reason_for: Callable[[GatewayError], str],
    ) -> None:
        super().__init__(ws, request, endpoint)
        self.id = uuid.uuid4().hex
        # The close reason for a refusal (the flavour's own wording).
        self.reason_for = reason_for
        self.realtime = realtime
        # Per-connection state an endpoint keeps (running task ids, encoder...).
        self.state: dict[str, object] = {}
        # Replies being resumed into the outbox (`resume`), stopped when it closes;
        # made by the first.
        self.resuming: dict[str, asyncio.Task[None]] | None = None
        # How fast the client may send (GATEWAY_MAX_MESSAGES_PER_S).
        self.rate = MessageRate(request.app[SETTINGS].max_messages_per_s)
        # A ping went and nothing has come from the client since; the read loop is
        # busy with a frame (`websocket_pings`).
        self.unanswered = False
        self.busy = False

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

    def resumes(self, message_id: str) -> bool:
        """Whether a resume of this reply is being followed here (a resume of it again
        primes nothing: what the encoder holds is what went out)."""
        task = (self.resuming or {}).get(message_id)
        return task is not None and not task.done()

    def resume(self, attached: Attached, prime: Callable[[Event], object]) -> None:
        """A reply resumed on this connection: `prime` (the endpoint's encoder, its
        frames thrown away) is fed what the client already has, so per-reply state
        (Nadoo's index, RAGFlow's running text) goes on from there — unless the
        reply is being resumed here already (its state is what went out: primed
        again, Nadoo's index began at 0 once more); then what followed goes out
        through the writer, in order, each once."""
        if self.outbox is None:
            attached.close()
            return
        if not self.resumes(attached.message_id):
            for event in attached.prefix:
                prime(event)
        if self.resuming is None:
            self.resuming = {}
        earlier = self.resuming.get(attached.message_id)
        if earlier is not None:
            earlier.cancel()  # (the new one goes on from where the socket is)
        self.resuming[attached.message_id] = self.realtime.resume(self.outbox, attached)

    def pace(self, attach: Attach) -> None:
        """Replies of the connection's user it falls behind on are fed to it from the
        replay buffer as it reads (`Realtime.pace`), not dropped."""
        if self.outbox is not None and self.principal is not None:
            self.realtime.pace(self.outbox, self.principal, attach)

    def _access_ended(self, why: str) -> None:
        """The lease's call: the token expired, its key was revoked or its user
        removed: the flavour's refusal, as at open, then close 1008."""
        if self.phase is not Phase.OPEN:
            return
        log.info("websocket closed: access ended", extra={"path": self.request.path, "why": why})
        self.closing(_cut_off(self, AuthError(why)))


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
        # Pings from one timer for every socket (`websocket_pings.py`), not a timer
        # each; the client's own pings answered by `_read`.
        autoping=False,
        max_msg_size=settings.max_frame_bytes,
        # permessage-deflate keeps two zlib contexts per connection, about 120 KB,
        # for frames of a few dozen bytes (bench/bench_deflate.py): off by default.
        compress=settings.websocket_compression,
    )
    if not ws.can_prepare(request).ok:
        return upgrade_required(request)
    realtime.admit()  # (a stopping replica's: 503)
    try:
        await ws.prepare(request)
    except ConnectionError:
        # Its client left during the handshake: not the server's fault (left to the
        # error middleware, a 500 and a traceback, no token needed).
        return web.Response(status=CLIENT_GONE)
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
        pings = request.app[PINGS]
        pings.add(conn)
        try:
            await _read(conn)
        finally:
            if lease is not None:
                lease.release()
            await _closed(conn)
            pings.forget()
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
        conn._overflowed()  # the rooms brought more while it opened than its outbox holds
    elif len(conn.outbox):
        conn.writer()  # what the rooms brought while it opened
    return True


async def _closed(conn: Connection) -> None:
    """Its client left or it was closed: nothing more runs for it."""
    for task in (conn.resuming or {}).values():
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


_flooding = EveryInterval(log)


async def _read(conn: Connection) -> None:
    endpoint = conn.endpoint
    read = 0
    # `receive()` itself rather than `async for`: the iterator's frame would be
    # kept for the socket's life (about 0.2 KB).
    while True:
        conn.busy = False
        if (msg := await conn.ws.receive()).type in _ENDS:
            return
        read += 1
        if read == FRAMES_PER_TURN:
            read = 0
            await asyncio.sleep(0)
        if conn.phase is not Phase.OPEN:
            continue  # closing (access ended, too slow): read to the close, nothing done
        conn.busy = True  # (a pong behind this frame waits: `websocket_pings.py`)
        conn.unanswered = False  # heard from
        # Every frame counts, pings and pongs too: each costs its reading.
        if not conn.rate.allow():
            if conn.rate.flooding():
                _flooding.note("websocket closed: flooding frames (%s)", conn.request.path)
                conn.closing(_cut_off(conn, conn.rate.flood_error()))
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and conn.rate.tell():
                # Dropped; said at most once a second, in the flavour's own error
                # (a ping past the rate: unanswered).
                for frame in endpoint.failed(conn.rate.error()):
                    await conn.send(frame)
            continue
        if msg.type is WSMsgType.PONG:
            continue
        if msg.type is WSMsgType.PING:
            await conn.ws.pong(msg.data)
            continue
        if msg.type == WSMsgType.TEXT:
            try:
                await endpoint.received(conn, msg.data)
            except GatewayError as exc:
                for frame in endpoint.failed(exc):
                    await conn.send(frame)
            except ConnectionError:
                return  # its client went away (or was cut) while it was answered
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


async def _cut_off(conn: Connection, error: GatewayError) -> None:
    """Access ended: the flavour's refusal and close 1008; a client that does not
    take them within CLOSE_TIMEOUT_S is cut.  Cut, not closed: a close waits for
    what is buffered for the client to be read, so one that reads nothing kept
    the connection past `exp` for as long as it liked (SO_LINGER 0: what is
    buffered is dropped, and the client reset).  One that reads gets everything,
    the refusal and the close included, as before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_TIMEOUT_S
    try:
        await asyncio.wait_for(_refuse(conn, error), CLOSE_TIMEOUT_S)
    except (TimeoutError, ConnectionError):
        pass
    except asyncio.CancelledError:
        # aiohttp cancels a close's wait for the buffer to drain once the socket's
        # handler is over; only this task's own cancellation goes on up.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    transport = conn.request.transport
    if transport is None:
        return
    if await _taken(transport, deadline):
        return  # all of it handed to the kernel: the close goes on as any close
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()  # (also when closing: a close waits for its buffer to drain)


async def _taken(transport: asyncio.BaseTransport, deadline: float) -> bool:
    """Whether what is buffered for the client leaves the buffer by `deadline` (a
    client that reads takes it meanwhile), looked at every DRAIN_TICK_S."""
    loop = asyncio.get_running_loop()
    buffered = getattr(transport, "get_write_buffer_size", lambda: 0)
    for _ in range(max(0, math.ceil((deadline - loop.time()) / DRAIN_TICK_S))):
        if not buffered():
            return True
        await asyncio.sleep(DRAIN_TICK_S)
    return not buffered()


# How often a cut-off connection's buffer is looked at while its client may read it.
DRAIN_TICK_S = 0.05
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


async def _refuse(conn: Connection, error: GatewayError) -> None:
    conn.phase = Phase.CLOSING
    for frame in conn.endpoint.refused(error):
        await conn.send(frame)
    await conn.ws.close(code=error.ws_close_code, message=close_reason(conn.reason_for(error)))
