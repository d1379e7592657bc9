"""Socket.IO transport: Open WebUI's real-time channel at `/ws/socket.io` (docs/PROTOCOLS.md §1.1).

python-socketio does the framing; this module owns a connection's life:

    handshake   what a request meets before python-socketio (origin, a missing
                Upgrade, a session held by another replica): `socketio_front.py`;
                always accepted, as Open WebUI does
    identity    a token in the handshake (`auth.token`, header, cookie, query) or a
                later `user-join`; a socket without a valid one stays anonymous
                and receives nothing
    delivery    an authenticated socket has one bounded `Outbox` on room
                `user:<id>`, written into Engine.IO's queue as events come,
                with backpressure (`socketio_delivery.py`)
    resume      a socket that joins gets the text so far of each of the user's
                running replies (`chat:message`, then the live rest); `events:chat`
                `{chat_id, data: {type: "resume", after: {<message id>: <seq>}}}`,
                or `auth.resume` `{<message id>: <seq>}` in the handshake, replays
                what followed each seq (`Replies.attach`); one follower per reply.
                The seq to name: a socket whose handshake has `auth.seq: true`
                gets it in every envelope of a reply
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from aiohttp import web

from gateway import rooms
from gateway.application.chats import Chats
from gateway.application.realtime import Attached, Realtime, Seat
from gateway.application.replies import Replies
from gateway.commands import ChatSignal, Resume
from gateway.edge import access
from gateway.edge.auth import Principal, find_token
from gateway.edge.origins import OriginPolicy
from gateway.edge.proxy import ProxyPolicy
from gateway.edge.throttle import MessageRate
from gateway.errors import AuthError, GatewayError, NotFound
from gateway.flavours.openwebui import OpenWebUIFlavour, decode_join, decode_resume
from gateway.settings import Settings
from gateway.transports import socketio_queue as engine
from gateway.transports.socketio_delivery import Delivery, Socket
from gateway.transports.socketio_front import FrontDoor, Sessions
from gateway.transports.socketio_guard import GuardedServer
from gateway.transports.socketio_logs import library_logger

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/ws/socket.io"
# Engine.IO timings Open WebUI uses (and socket.io-client expects by default).
PING_INTERVAL_S = 25
PING_TIMEOUT_S = 20
# A stopping replica's CLOSE packets go out, then the websockets still open are cut.
CLOSE_WAIT_S = 0.2
FLAVOUR = OpenWebUIFlavour()


async def handle(request: web.Request) -> web.StreamResponse:
    """Every request on the Socket.IO path, to the transport its cleanup context made."""
    return await request.app[SOCKETIO].handle(request)


def add_routes(app: web.Application, path: str = SOCKETIO_PATH) -> None:
    # Engine.IO clients ask for "<path>/"; accept the bare path too.
    for route in (path + "/", path):
        app.router.add_route("GET", route, handle)
        app.router.add_route("POST", route, handle)


class SocketIOTransport:
    def __init__(
        self,
        settings: Settings,
        origins: OriginPolicy,
        realtime: Realtime,
        chats: Chats,
        replies: Replies,
    ) -> None:
        transports = ["polling", "websocket"] if settings.enable_websocket_support else ["polling"]
        self.sio = GuardedServer(
            async_mode="aiohttp",
            # CORS is the shared middleware's job; [] turns Engine.IO's own off.
            cors_allowed_origins=[],
            always_connect=True,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            transports=transports,
            # Polling only: the handshake offers no upgrade a client would then try.
            allow_upgrades=settings.enable_websocket_support,
            max_http_buffer_size=settings.max_frame_bytes,
            frames_per_s=settings.max_messages_per_s,
            # Not False: that would write tracebacks past the gateway's log format.
            logger=library_logger("socketio.server"),
            engineio_logger=library_logger("engineio.server"),
        )
        self._conns: dict[str, Socket] = {}
        self._stopped = False
        self._messages_per_s = settings.max_messages_per_s
        self._realtime = realtime
        self._chats = chats
        self._replies = replies
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("user-join", self._on_user_join)
        self.sio.on("events:chat", self._on_chat_event)
        # Every other event: Open WebUI's `heartbeat` and `usage` (nothing to do with
        # them here), and names nobody handles.
        self.sio.on("*", self._on_other)
        sessions = Sessions(
            settings.max_connections,
            settings.max_connections_per_address,
            ProxyPolicy(settings.trusted_proxies).trusts,
        )
        self._front = FrontDoor(
            self.sio, origins, realtime, sessions, settings.websocket_compression
        )
        self._delivery = Delivery(realtime, self._front.upgrades)

    def handle(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        # The front door's own awaitable: no frame of this one kept for a socket's life.
        return self._front.handle(request)

    async def shutdown(self) -> None:
        """Every socket disconnected (a stopping replica: its clients reconnect, through
        the balancer, elsewhere); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        tcps = {
            conn.eio_socket.sid: conn.tcp
            for conn in self._conns.values()
            if conn.eio_socket is not None and conn.tcp is not None
        }
        for conn in list(self._conns.values()):
            self._delivery.release(conn)
            if conn.opened is not None:
                conn.opened()
        await engine.close_all(
            self.sio,
            lambda sock: tcps.get(sock.sid) or self._front.upgrades.get(sock.sid),
            CLOSE_WAIT_S,
        )
        await self.sio.shutdown()

    # -- events from clients --------------------------------------------------
    async def _on_connect(self, sid: str, environ: Mapping[str, Any], auth: Any) -> bool:
        conn = Socket(sid, rate=MessageRate(self._messages_per_s))
        self._conns[sid] = conn
        conn.eio_socket = engine.engine_socket(self.sio, sid)
        request: web.Request = environ["aiohttp.request"]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            conn.tcp = request.transport
        try:
            token = find_token(
                request.headers,
                request.cookies,
                request.query,
                auth if isinstance(auth, Mapping) else None,
            )
        except AuthError:
            token = None
        if isinstance(auth, Mapping) and auth.get("seq") is True:
            conn.numbered = True
        if isinstance(auth, Mapping) and "resume" in auth:
            # `auth: {token, resume: {<message id>: <seq>}}`: as an `events:chat` resume.
            with contextlib.suppress(GatewayError):
                conn.handshake_resume = decode_resume({"data": {"after": auth["resume"]}})
        if token:
            with contextlib.suppress(AuthError):
                await self._join(conn, await self._realtime.authenticate(token))
        if self._conns.get(sid) is conn:  # (not gone while it was being joined)
            user_id = conn.principal.user_id if conn.principal is not None else None
            conn.opened = access.connection_opened("socketio", "openwebui", user_id)
        return True

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._conns.pop(sid, None)
        if conn is None:
            return
        self._delivery.release(conn)
        if conn.opened is not None:
            conn.opened()
        engine.end_long_poll(conn.eio_socket)

    async def _on_user_join(self, sid: str, *args: Any) -> dict[str, Any] | None:
        conn = self._conns.get(sid)
        if conn is None:
            return None
        if not conn.rate.allow():
            return _too_fast(conn)
        if len(args) != 1:
            return None  # an empty ack: Open WebUI's client sends one argument
        data = args[0]
        try:
            principal = await self._realtime.authenticate(decode_join(data).token)
        except GatewayError as exc:
            log.info("user-join refused", extra={"sid": sid, "error": exc.message})
            return None
        await self._join(conn, principal)
        if conn.opened is not None:
            conn.opened.identified(principal.user_id)
        return {"id": principal.user_id, "name": principal.name}

    async def _on_chat_event(self, sid: str, *args: Any) -> bool | dict[str, Any] | None:
        conn = self._conns.get(sid)
        if conn is None:
            return None
        if not conn.rate.allow():
            return _too_fast(conn)
        if conn.principal is None or len(args) != 1:
            return None  # an empty ack: Open WebUI's client sends one argument
        data = args[0]
        try:
            event = FLAVOUR.decode(("events:chat", data))
        except GatewayError as exc:
            if _asks_resume(data):
                # Told, as the raw WebSocket flavours tell it (`bad_resume`): an empty
                # ack would read as "nothing to resume".
                return {"error": {"code": "bad_resume", "message": exc.message}}
            return None
        if isinstance(event, Resume):
            return await self._resume(conn, conn.principal, event)
        if not isinstance(event, ChatSignal):
            return None
        if event.type == "last_read_at":
            await self._chats.mark_read(conn.principal, event.chat_id)
            return None
        # join/leave: events of the user's chats already reach every socket of
        # the user (room user:<id>); the ack is what the web app waits for.
        if event.type == "join":
            return await self._chats.owns(conn.principal, event.chat_id)
        return True if event.type == "leave" else None

    async def _on_other(self, event: str, sid: str, *args: Any) -> dict[str, Any] | None:
        """Nothing to do, but counted against the socket's rate like any event, and
        acked (empty) when asked: python-socketio leaves an event it has no handler
        for unacked, and the client's callback waiting for ever."""
        conn = self._conns.get(sid)
        if conn is not None and not conn.rate.allow():
            return _too_fast(conn)
        return None

    async def _resume(self, conn: Socket, principal: Principal, resume: Resume) -> dict[str, Any]:
        """Each named reply's events after its seq, then live; the ack lists which
        replies were resumed and which are unknown (or not the user's)."""
        resumed: list[str] = []
        unknown: list[str] = []
        if conn.outbox is None:
            return {"resumed": resumed, "unknown": [m for m, _ in resume.after]}
        with conn.outbox.held(m for m, _ in resume.after):
            for message_id, after in resume.after:
                try:
                    attached = await self._replies.attach(
                        principal, message_id, after, resume.chat_id
                    )
                except NotFound:
                    unknown.append(message_id)
                    continue
                self._follow(conn, attached)
                resumed.append(message_id)
        return {"resumed": resumed, "unknown": unknown}

    def _follow(self, conn: Socket, attached: Attached) -> None:
        """The reply's events into the socket from the attachment on; a reply it already
        follows starts again from there."""
        if conn.outbox is None:
            attached.close()
            return
        earlier = conn.resuming.pop(attached.message_id, None)
        if earlier is not None:
            earlier.cancel()
        task = self._realtime.resume(conn.outbox, attached)
        conn.resuming[attached.message_id] = task
        task.add_done_callback(lambda done: self._followed(conn, attached.message_id, done))

    @staticmethod
    def _followed(conn: Socket, message_id: str, task: asyncio.Task[None]) -> None:
        if conn.resuming.get(message_id) is task:
            del conn.resuming[message_id]

    # -- helpers --------------------------------------------------------------
    async def _join(self, conn: Socket, principal: Principal) -> None:
        """Into room user:<id>, here and (once subscribed) on every replica.  Not for a
        socket gone while its token was read: its seat, outbox and lease would be
        kept for good (nothing would release them)."""
        if self._conns.get(conn.sid) is not conn:
            return
        if conn.principal == principal and conn.outbox is not None:
            return
        self._delivery.release(conn)
        conn.principal = principal
        conn.outbox = self._delivery.subscribe(conn, [rooms.user(principal.user_id)])
        conn.outbox.note_starts()  # for the catch-up below
        self._realtime.pace(conn.outbox, principal, self._replies.attach)
        self._realtime.seat(conn.sid, Seat("socketio", principal.user_id))
        conn.lease = self._realtime.hold(principal, lambda why: self._end_access(conn, why))
        outbox = conn.outbox
        # What the handshake asked to resume exactly: its replies' live copies held
        # back from the subscription on (one arriving while the room is watched
        # would go straight out, and its follower send it again); every other
        # running reply as its text so far (a tab that opens, or comes back,
        # mid-reply: its snapshot replaces whatever came before it).
        resume = conn.handshake_resume
        named = {message_id for message_id, _ in resume.after} if resume is not None else set()
        try:
            with outbox.held(named):
                await self._realtime.watching(outbox.rooms)
                if resume is not None and self._conns.get(conn.sid) is conn:
                    await self._resume(conn, principal, resume)
            for attached in await self._replies.catch_up(principal, outbox, skip=named):
                if conn.outbox is outbox:  # (not released meanwhile: gone, joined again)
                    self._follow(conn, attached)
                else:
                    attached.close()
        finally:
            outbox.stop_noting()  # (catch_up did, unless what came before it failed)

    def _end_access(self, conn: Socket, why: str) -> None:
        """The token expired, its key was revoked or its user removed: a Socket.IO
        disconnect (socket.io-client does not reconnect after one; the web app
        signs in again)."""
        conn.lease = None
        self._delivery.release(conn)
        log.info("socket disconnected: access ended", extra={"sid": conn.sid, "why": why})
        self._delivery.in_background(self.sio.disconnect(conn.sid))


def _asks_resume(data: Any) -> bool:
    inner = data.get("data") if isinstance(data, Mapping) else None
    return isinstance(inner, Mapping) and inner.get("type") == "resume"


def _too_fast(conn: Socket) -> dict[str, Any]:
    """The ack of an event dropped for coming too fast (Socket.IO has no error frame)."""
    error = conn.rate.error()
    return {"error": {"code": error.code, "message": error.message}}


# The transport is made when the services it needs exist (`gateway/app.py`).
SOCKETIO = web.AppKey("socketio", SocketIOTransport)
