"""The Socket.IO path's front door: what a request meets before python-socketio.

origin      checked against the shared allowlist: 403 before Engine.IO sees it
upgrade     `transport=websocket` without `Upgrade: websocket` (a proxy dropped
            it): 426 naming the missing lines, not Engine.IO's bare 400
session     a `sid` this replica does not hold: 400 saying whether another
            replica holds it (the proxy is not sticky) or it expired, with
            the fix; every session is registered on the bus from its
            handshake to its end so a replica can tell
too long    a long-polling POST over GATEWAY_MAX_FRAME_BYTES: 413, its session
            ended at once (Engine.IO's close would wait for a poll the client,
            blocked on its POST, never sends)
upgrades    while a polling session upgrades, its websocket's TCP transport
            is kept so a stuck client can be cut (`socketio.py`)
compression permessage-deflate only with GATEWAY_WEBSOCKET_COMPRESSION: the
            client's offer is taken off the handshake otherwise
sessions    a new session (a request without `sid`) past GATEWAY_MAX_CONNECTIONS
            sessions open: 503; past GATEWAY_MAX_CONNECTIONS_PER_ADDRESS from one
            address (its TCP peer's; GATEWAY_TRUSTED_PROXIES excepted, as for
            connections): 429.  A long-polling session holds no connection
            between its requests, so the connection bounds alone never saw it:
            one address opened 35,000 (`Sessions`)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import socketio
from aiohttp import web

from gateway.application.realtime import Realtime
from gateway.edge.connections import EveryInterval, PerAddress
from gateway.edge.origins import OriginPolicy
from gateway.edge.proxy import STICKY_LINES, upgrade_required
from gateway.errors import Forbidden
from gateway.transports.socketio_engine import end_session

EXTENSIONS = "Sec-WebSocket-Extensions"
# The address key a session's handshake request counts against ("": exempt), until
# `on_open` takes it with the session's sid.
_SESSION_KEY = web.RequestKey("session_address", str)


class Sessions:
    """Engine.IO sessions open, in total and per address: checked at each handshake
    (a request without `sid`), counted from it until the session closes.  A
    handshake under way counts too (`pending`), so a burst of them cannot all
    pass one look."""

    def __init__(
        self,
        max_total: int,
        max_per_address: int | None,
        exempt: Callable[[str], bool] = lambda peer: False,
    ) -> None:
        self.max_total = max_total
        self.open: dict[str, str] = {}  # Engine.IO sid → its address key ("" exempt)
        self._by_address = PerAddress(max_per_address, exempt)
        self.pending = 0
        self._refusals = EveryInterval()

    def key_of(self, request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return self._by_address.key(peer[0] if isinstance(peer, tuple) else "")

    def refusal(self, key: str) -> web.Response | None:
        if len(self.open) + self.pending >= self.max_total:
            self._refusals.note("Socket.IO session refused: GATEWAY_MAX_CONNECTIONS reached")
            return _refused(503, "Too many Socket.IO sessions; try again shortly")
        if self._by_address.full(key):
            self._refusals.note(
                "Socket.IO session from %s refused: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS (%d)",
                key,
                self._by_address.limit,
            )
            return _refused(429, "Too many Socket.IO sessions from your address; close some first")
        return None

    def reserve(self, key: str) -> None:
        self.pending += 1
        self._by_address.add(key)

    def unreserve(self, key: str) -> None:
        """A handshake that made no session."""
        self.pending -= 1
        self._by_address.remove(key)

    def opened(self, sid: str, key: str) -> None:
        """A reserved handshake made its session: counted until `closed`."""
        self.pending -= 1
        self.open[sid] = key

    def closed(self, sid: str) -> None:
        key = self.open.pop(sid, None)
        if key is not None:
            self._by_address.remove(key)


def _refused(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers={"Retry-After": "1"})


class FrontDoor:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        origins: OriginPolicy,
        realtime: Realtime,
        sessions: Sessions,
        compression: bool = False,
    ) -> None:
        self.sio = sio
        self.sessions = sessions
        # permessage-deflate on the websocket transport (GATEWAY_WEBSOCKET_COMPRESSION).
        self._compression = compression
        self._origins = origins
        self._realtime = realtime
        # Upgrades from polling: Engine.IO sid → the websocket's TCP transport.
        self.upgrades: dict[str, asyncio.Transport] = {}
        self._track_sessions()

    def _track_sessions(self) -> None:
        """Register each Engine.IO session on the bus from its handshake to its end, so
        a misrouted poll can say where the session lives.  Not at the Socket.IO
        connect: without stickiness the request after the handshake (the client's
        CONNECT packet) is already the first to land on another replica."""
        eio = self.sio.eio
        # python-socketio's own Engine.IO handlers; ours run first, then call them.
        opened, closed = eio.handlers["connect"], eio.handlers["disconnect"]

        async def on_open(eio_sid: str, environ: Mapping[str, Any]) -> Any:
            request = environ.get("aiohttp.request")
            if isinstance(request, web.Request) and _SESSION_KEY in request:
                self.sessions.opened(eio_sid, request.pop(_SESSION_KEY))
            self._realtime.session_opened(eio_sid)
            return await opened(eio_sid, environ)

        async def on_close(eio_sid: str, reason: Any) -> Any:
            self.sessions.closed(eio_sid)
            self._realtime.session_closed(eio_sid)
            return await closed(eio_sid, reason)

        eio.on("connect", on_open)
        eio.on("disconnect", on_close)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._origins.allows(request.headers.get("Origin"), request.host):
            raise Forbidden(f"Origin {request.headers.get('Origin')} is not allowed")
        eio_sid = request.query.get("sid")
        upgrading = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.query.get("transport") == "websocket" and not upgrading:
            return upgrade_required(request)
        if eio_sid is not None and eio_sid not in self.sio.eio.sockets:
            return await self._unknown_session(eio_sid)
        limit = self.sio.eio.max_http_buffer_size
        if eio_sid is not None and request.method == "POST" and request.content_length is None:
            # Engine.IO reads a polling body by its Content-Length: a chunked one was
            # read as empty and answered 200, its packets lost.  Every Engine.IO
            # client sends the length.
            detail = "A polling request's body needs a Content-Length (it is not read chunked)"
            return web.json_response({"detail": detail}, status=411)
        if (
            eio_sid is not None
            and request.method == "POST"
            and (request.content_length or 0) > limit
        ):
            return await self._too_long(eio_sid, limit)
        if upgrading and eio_sid is not None and request.transport is not None:
            self.upgrades[eio_sid] = request.transport
        if upgrading and not self._compression and EXTENSIONS in request.headers:
            # Engine.IO's websocket accepts permessage-deflate whenever it is offered
            # (browsers always offer it): without the offer there is nothing to accept.
            headers = request.headers.copy()
            del headers[EXTENSIONS]
            request = request.clone(headers=headers)
        if eio_sid is None:
            key = self.sessions.key_of(request)
            refused = self.sessions.refusal(key)
            if refused is not None:
                return refused
            self.sessions.reserve(key)
            request[_SESSION_KEY] = key  # taken by `on_open` with the session's sid
        try:
            # Engine.IO's server itself (python-socketio's `handle_request` only hands
            # on to it, and its frame would be kept for the socket's life).
            response: web.StreamResponse = await self.sio.eio.handle_request(request)
            return response
        finally:
            if upgrading and eio_sid is not None:
                self.upgrades.pop(eio_sid, None)
            if eio_sid is None and _SESSION_KEY in request:  # no session was made
                self.sessions.unreserve(request.pop(_SESSION_KEY))

    async def _too_long(self, eio_sid: str, limit: int) -> web.Response:
        """A long-polling POST past the limit: its session ended now, and 413."""
        sock = self.sio.eio.sockets.get(eio_sid)
        if sock is not None and not sock.upgraded:  # (an upgraded one takes no POST anyway)
            await end_session(sock)
        detail = f"A polling request's body is at most {limit} bytes (GATEWAY_MAX_FRAME_BYTES)"
        return web.json_response({"detail": detail}, status=413)

    async def _unknown_session(self, eio_sid: str) -> web.Response:
        """A request for a session this replica does not hold: say why, and the fix."""
        holder = await self._realtime.session_replica(eio_sid)
        if holder is not None:
            detail = (
                f"Session ID unknown here: it lives on another replica ({holder}). {STICKY_LINES}."
            )
        else:
            detail = (
                "Session ID unknown: it expired, or the replica holding it restarted; the "
                f"client reconnects. If this repeats with several replicas: {STICKY_LINES}."
            )
        return web.json_response({"detail": detail}, status=400)
