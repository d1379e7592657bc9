"""What every HTTP route needs: the caller's principal, a JSON body, errors in its flavour."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway import jsonwire
from gateway.application.keys import AUTHENTICATOR, ORIGINS
from gateway.edge import metrics
from gateway.edge.auth import Principal, find_token
from gateway.edge.origins import grant_stream
from gateway.errors import (
    CLIENT_GONE,
    AuthError,
    BadRequest,
    GatewayError,
    InternalError,
    PayloadTooLarge,
    PeerError,
    UnsupportedMediaType,
)
from gateway.flavours.openai import error_for
from gateway.text import client_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Renderer = Callable[[GatewayError], web.Response]


async def principal_of(request: web.Request) -> Principal:
    token = find_token(request.headers, request.cookies)
    if not token and ("token" in request.query or "authorization" in request.query):
        # A token in the URL ends up in access logs, proxies' and browsers' histories:
        # read only where a client cannot send a header (SSE, WebSocket routes).
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise AuthError(
            "Not authenticated: a token in the URL (?token=) is read only by the "
            "event streams and WebSockets; send 'Authorization: Bearer <token>'",
            reason="missing",
        )
    return await request.app[AUTHENTICATOR].authenticate(token)


@web.middleware
def plain_bodies(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """415 (in the route's error shape: place it inside the error middleware) for a body
    sent compressed.  No client of the gateway's flavours compresses what it sends,
    and decompressing was the costliest thing anyone could make a replica do without
    signing in: a 1 MiB gzip body of 1 GiB held the loop 1.2 s before any route
    refused it (the server reads bodies as sent: `auto_decompress=False`).  Not a
    coroutine: no frame kept for a socket's life."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity") and request.body_exists:
        raise UnsupportedMediaType(
            f"Send the body uncompressed: Content-Encoding {encoding[:40]!r} is not accepted"
        )
    return handler(request)


async def read_json(request: web.Request) -> Any:
    # Only a JSON type: text/plain, forms and multipart are what a page on another
    # site can send without a preflight (SECURITY.md, "Cross-site requests").  No
    # body at all is no such danger: it is the 400 of an empty body below.
    if request.body_exists and request.content_type != "application/json":
        sent = (request.headers.get("Content-Type") or "none")[:100]
        raise UnsupportedMediaType(
            f"Send the body as JSON with 'Content-Type: application/json' (got {sent})"
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"Request body is larger than {request.client_max_size} bytes"
        ) from None
    except RequestPayloadError as exc:
        # A body its framing does not hold (a chunk size that is no number…).
        raise BadRequest(f"Request body could not be read: {str(exc)[:100]}") from None
    try:
        # No NUL or lone surrogate in any string: no store can hold them.
        return client_json(raw)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None


def render_openai(error: GatewayError) -> web.Response:
    return web.json_response(error_for(error), status=error.http_status)


def render_detail(error: GatewayError) -> web.Response:
    # Open WebUI's shape (FastAPI's HTTPException).
    return web.json_response({"detail": error.message}, status=error.http_status)


class HTTPStatusError(PeerError):
    """aiohttp's own 404/405/413 re-shaped into the route's flavour."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = "not_found" if status == 404 else "http_error"


def error_middleware(
    renderers: Sequence[tuple[str, Renderer]], default: Renderer, base_path: str = ""
) -> Any:
    """Turn errors into the shape of the flavour whose path prefix matches."""

    def pick(path: str) -> Renderer:
        path = within(path, base_path) or path
        for prefix, renderer in renderers:
            if path.startswith(prefix):
                return renderer
        return default

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            response = pick(request.path)(exc)
            if exc.retry_after_s is not None:
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.text or exc.reason
            if exc.status == 404:
                message = f"No route for {request.method} {request.path}" + prefix_hint(
                    request.path, base_path
                )
            response = pick(request.path)(HTTPStatusError(exc.status, message))
            for header in ("Allow",):
                if header in exc.headers:
                    response.headers[header] = exc.headers[header]
            return response
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path, "method": request.method})
            return pick(request.path)(InternalError())

    return errors


def within(path: str, base_path: str) -> str | None:
    """`path` relative to `base_path` ("/chat/x" → "/x"), or None when it is outside it."""
    if not base_path:
        return path
    if path == base_path or path.startswith(base_path + "/"):
        return path[len(base_path) :] or "/"
    return None


# The first path segment of every gateway route: "api", "ws", "v1" and "ragflow"
# begin longer paths, "health" and "ready" are whole routes.
ROUTE_ROOTS = ("api", "ws", "v1", "ragflow")
ROUTE_LEAVES = ("health", "ready")


def route_start(path: str) -> int | None:
    """How many segments come before something that looks like a gateway route
    ("/chat/api/v1/models" → 1, "/api/nope" → 0), or None if nothing does."""
    segments = _segments(path)
    for index, segment in enumerate(segments):
        more = index + 1 < len(segments)
        if (segment in ROUTE_ROOTS and more) or (segment in ROUTE_LEAVES and not more):
            return index
    return None


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def prefix_hint(path: str, base_path: str = "") -> str:
    """For a 404: if the path looks like a gateway route under the wrong prefix, say how to
    fix it.  Empty for an unknown path among the gateway's own (`/api/nope`)."""
    inner = within(path, base_path)
    if inner is None:
        # Only the outer application (GATEWAY_BASE_PATH set) sees paths outside it.
        if route_start(path) != 0:
            return ""
        return (
            f". The gateway lives under {base_path} (GATEWAY_BASE_PATH): ask for "
            f"{base_path}{path}. A proxy must not strip {base_path} while GATEWAY_BASE_PATH is "
            f"set (nginx: proxy_pass http://gateway; without a trailing slash; Caddy: handle, "
            f"not handle_path); or unset GATEWAY_BASE_PATH and have the proxy send "
            f"X-Forwarded-Prefix: {base_path}"
        )
    skipped = route_start(inner)
    if not skipped:
        return ""
    prefix = base_path + "/" + "/".join(_segments(inner)[:skipped])
    return (
        f". It looks like the gateway is reached under {prefix}: set "
        f"GATEWAY_BASE_PATH={prefix}, or have the proxy strip it and send "
        f"X-Forwarded-Prefix: {prefix} (nginx: location {prefix}/ {{ ... proxy_pass "
        f"http://gateway/; }} with the trailing slash; Caddy: handle_path {prefix}/*)"
    )


async def json_array(
    request: web.Request,
    items: AsyncIterator[Any],
    *,
    inside: tuple[bytes, bytes] = (b"", b""),
) -> web.StreamResponse:
    """A JSON array written as its items come, each encoded alone, between
    `inside`'s two halves (RAGFlow's `{"code":0,"message":"","data":` and `}`): a
    list of whole chats (`/api/v1/chats/all`, a RAGFlow assistant's sessions) is as
    big as everything a user has, and built in one piece it held the loop for
    seconds and the process's memory for gigabytes.  A failure before the first
    item is the route's error as usual; past it, the status is sent already, so it
    is logged and the connection cut: its client sees the body broken, never a
    shorter list that reads as whole."""
    before, after = inside
    kind = {"Content-Type": "application/json; charset=utf-8"}
    response = web.StreamResponse(headers=kind)
    # (The CORS middleware adds its headers only to a response not yet sent.)
    grant_stream(request, response, request.app[ORIGINS])
    first = True
    try:
        async for item in items:
            chunk = jsonwire.dumps(item).encode()
            if first:
                await response.prepare(request)
            await response.write((before + b"[" if first else b",") + chunk)
            first = False
        if first:
            return web.Response(body=before + b"[]" + after, headers=kind)
        await response.write(b"]" + after)
        await response.write_eof()
    except ConnectionError:
        return web.Response(status=CLIENT_GONE) if first else response  # its client left
    except Exception as exc:
        if first:
            raise  # nothing sent: the error middleware answers in the route's shape
        if isinstance(exc, GatewayError):
            log.warning("a streamed list was cut: %s", exc.message, extra={"path": request.path})
        else:
            log.exception("a streamed list was cut", extra={"path": request.path})
        if request.transport is not None:
            request.transport.abort()
    return response
