"""One origin allowlist for CORS preflights, WebSocket and Socket.IO handshakes.

`CORS_ALLOW_ORIGIN` is `*` or a `;`-separated list of origins
(`https://chat.example.com;http://localhost:5173`).  A request without an
`Origin` header is not from a browser page and is not an origin question.
A page served by the gateway itself (same scheme+host as the request) is
always allowed, so the bundled frontend works with any list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE_S = 600


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        entries = [entry.strip().rstrip("/") for entry in allowed if entry.strip()]
        self.allow_any = "*" in entries
        self._allowed = {entry.lower() for entry in entries if entry != "*"}

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        """True when a request from page `origin` to our `host` may proceed."""
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if self.allow_any or origin in self._allowed:
            return True
        if host:
            _, _, origin_host = origin.partition("://")
            return origin_host == host.lower()
        return False

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        policy = self

        @web.middleware
        async def cors(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            allowed = policy.allows(origin, request.host)
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                if not allowed:
                    # No grant headers: the browser refuses the real request.
                    return web.Response(status=403, text="Origin not allowed")
                response = web.Response(status=204)
                response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    response.headers["Access-Control-Allow-Headers"] = requested
                response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
                _grant(response, origin)
                return response
            result = await handler(request)
            if origin is not None and allowed and not result.prepared:
                _grant(result, origin)
            return result

        return cors


def _grant(response: web.StreamResponse, origin: str | None) -> None:
    if origin is None:
        return
    # Echo the origin (not "*") so credentialed requests (cookies) work.
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Vary"] = "Origin"


def grant_stream(request: web.Request, response: web.StreamResponse, policy: OriginPolicy) -> None:
    """CORS headers for a streaming response, set before `prepare()`."""
    origin = request.headers.get("Origin")
    if origin is not None and policy.allows(origin, request.host):
        _grant(response, origin)
