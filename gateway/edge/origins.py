"""One origin allowlist for CORS preflights, WebSocket and Socket.IO handshakes.

`CORS_ALLOW_ORIGIN` is `*` or a `;`-separated list of origins
(`https://chat.example.com;http://localhost:5173`).  A request without an
`Origin` header is not from a browser page and is not an origin question.
A page served by the gateway itself (same scheme+host as the request) is
always allowed, so the bundled frontend works with any list.

Credentials (the `token` cookie) are another matter (SECURITY.md, "Cross-site
requests"): `Access-Control-Allow-Credentials` is granted only to origins listed
by name, never because of `*`, and a write (POST, PUT, PATCH, DELETE) that
authenticates by the cookie is refused with 403 unless it comes from this site
or a listed origin — a form or a `no-cors` fetch on any site would otherwise
carry the cookie, and the handler would run even though the page cannot read
the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from gateway.edge.connections import EveryInterval
from gateway.errors import Forbidden

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE_S = 600
# Methods a cross-site page can send with cookies and that must change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What Sec-Fetch-Site says of a request the browser made for the gateway's own
# page ("none": typed in, a bookmark); anything else needs an allowed Origin.
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})


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
        return self._same_host(origin, host)

    def listed(self, origin: str) -> bool:
        """True for an origin named in CORS_ALLOW_ORIGIN (not merely allowed by `*`)."""
        return origin.strip().rstrip("/").lower() in self._allowed

    @staticmethod
    def _same_host(origin: str, host: str | None) -> bool:
        if not host:
            return False
        _, _, origin_host = origin.strip().rstrip("/").lower().partition("://")
        return origin_host == host.lower()

    def refuses_cookie_write(self, request: web.Request) -> str | None:
        """Why a state-changing request that authenticates by the `token` cookie
        must not run (a cross-site page may have sent it), or None."""
        if request.method in SAFE_METHODS or not uses_cookie(request):
            return None
        origin = request.headers.get("Origin")
        if origin is not None and self.listed(origin):
            return None
        fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        if fetch_site:
            # The browser's own word, which no page can forge.
            return None if fetch_site in SAME_ORIGIN_FETCH else f"Sec-Fetch-Site {fetch_site}"
        if origin is None:
            # Every browser since 2020 sends Origin with a POST: none is a script
            # or an SDK with a cookie jar, which no other site can drive.
            return None
        if origin.strip().lower() != "null" and self._same_host(origin, request.host):
            return None
        return f"Origin {origin}"

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        policy = self

        # Not a coroutine: where there is nothing to add to the response (no Origin,
        # or a WebSocket handshake, which CORS does not govern) it hands on the
        # handler's own awaitable and keeps no frame for the request's life.
        @web.middleware
        def cors(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> Awaitable[web.StreamResponse]:
            origin = request.headers.get("Origin")
            if (origin is None and request.method != "OPTIONS") or request.headers.get(
                "Upgrade", ""
            ).lower() == "websocket":
                return handler(request)
            return granted(request, handler, origin)

        async def granted(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
            origin: str | None,
        ) -> web.StreamResponse:
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
                policy.grant(response, origin)
                return response
            result = await handler(request)
            if origin is not None and allowed and not result.prepared:
                policy.grant(result, origin)
            return result

        return cors

    def cookie_write_guard(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """403 (in the route's error shape: place it inside the error middleware) for a
        write that authenticates by the cookie from a page that may be another site's."""
        policy = self
        # Anyone can send a cookie and a foreign Origin: one line per interval.
        refusals = EveryInterval(log)

        @web.middleware
        def cross_site(  # not a coroutine: no frame kept (see `forwarded`, proxy.py)
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> Awaitable[web.StreamResponse]:
            why = policy.refuses_cookie_write(request)
            if why is not None:
                refusals.note(
                    "cross-site write with the token cookie refused: %s %s (%s)",
                    request.method,
                    request.path,
                    why,
                )
                raise Forbidden(
                    f"Cross-site request refused ({why}): a {request.method} authenticated by "
                    "the token cookie must come from this site or an origin listed in "
                    "CORS_ALLOW_ORIGIN; other clients send 'Authorization: Bearer <token>'"
                )
            return handler(request)

        return cross_site

    def grant(self, response: web.StreamResponse, origin: str | None) -> None:
        """The grant headers for an allowed `origin`.

        The origin is echoed for every allowed page (browsers accept it exactly as
        they accept `*` for a request without credentials); credentials only for an
        origin listed by name: `*` must never let any site read answers made with
        the user's cookie."""
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        if self.listed(origin):
            response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"


def uses_cookie(request: web.Request) -> bool:
    """True when the request's token is the `token` cookie (`auth.find_token` takes a
    header first), the one credential a browser adds on its own."""
    if "Authorization" in request.headers or request.headers.get("x-api-key"):
        return False
    return bool(request.cookies.get("token"))


def grant_stream(request: web.Request, response: web.StreamResponse, policy: OriginPolicy) -> None:
    """CORS headers for a streaming response, set before `prepare()`."""
    origin = request.headers.get("Origin")
    if origin is not None and policy.allows(origin, request.host):
        policy.grant(response, origin)
