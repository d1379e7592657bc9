"""What every HTTP route needs: the caller's principal, a JSON body, errors in its flavour."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.auth import Principal, find_token
from gateway.context import gateway_of
from gateway.errors import (
    BadRequest,
    GatewayError,
    InternalError,
    PayloadTooLarge,
    PeerError,
)
from gateway.flavours.openai import error_for

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Renderer = Callable[[GatewayError], web.Response]


async def principal_of(request: web.Request) -> Principal:
    token = find_token(request.headers, request.cookies, request.query)
    return await gateway_of(request).authenticator.authenticate(token)


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"Request body is larger than {request.client_max_size} bytes"
        ) from None
    try:
        return json.loads(raw)
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
        path = path.removeprefix(base_path)
        for prefix, renderer in renderers:
            if path.startswith(prefix):
                return renderer
        return default

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return pick(request.path)(exc)
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


# Where the gateway's own routes begin: a path with one of these after some
# other prefix was probably meant for the gateway under that prefix.
ROUTE_MARKERS = ("/api/", "/ws/", "/v1/", "/ragflow/", "/health", "/ready")


def prefix_hint(path: str, base_path: str = "") -> str:
    """For a 404: if the path looks like a gateway route under a prefix, say how to fix it."""
    inner = path.removeprefix(base_path)
    for marker in ROUTE_MARKERS:
        at = inner.find(marker)
        if at > 0:
            prefix = base_path + inner[:at]
            return (
                f". It looks like the gateway is reached under {prefix}: set "
                f"GATEWAY_BASE_PATH={prefix}, or have the proxy strip it and send "
                f"X-Forwarded-Prefix: {prefix} (nginx: location {prefix}/ {{ ... proxy_pass "
                f"http://gateway/; }} with the trailing slash; Caddy: handle_path {prefix}/*)"
            )
    return ""
