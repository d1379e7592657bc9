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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import socketio
from aiohttp import web

from gateway.application.realtime import Realtime
from gateway.edge.origins import OriginPolicy
from gateway.edge.proxy import STICKY_LINES, upgrade_required
from gateway.errors import Forbidden
from gateway.transports.socketio_guard import end_session

EXTENSIONS = "Sec-WebSocket-Extensions"


class FrontDoor:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        origins: OriginPolicy,
        realtime: Realtime,
        compression: bool = False,
    ) -> None:
        self.sio = sio
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
            self._realtime.session_opened(eio_sid)
            return await opened(eio_sid, environ)

        async def on_close(eio_sid: str, reason: Any) -> Any:
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
        try:
            # Engine.IO's server itself (python-socketio's `handle_request` only hands
            # on to it, and its frame would be kept for the socket's life).
            response: web.StreamResponse = await self.sio.eio.handle_request(request)
            return response
        finally:
            if upgrading and eio_sid is not None:
                self.upgrades.pop(eio_sid, None)

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
