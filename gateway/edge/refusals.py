"""aiohttp's own refusals, in JSON: what it answers before any route or middleware.

A request aiohttp cannot parse (a header line past 8,190 bytes, a malformed
request line, a `Content-Encoding` it cannot decode, such as `br` without the
Brotli package) is answered by its `RequestHandler.handle_error` with a
`text/plain` body that quotes the request (`Got more than 8190 bytes when
reading: b'Authorization: Bearer eyJ…'`): a client's token echoed back, and
no shape any client of the gateway reads.  `JsonRefusals` answers the same
status with `{"detail": …}` (Open WebUI's shape; every route's error has a
`detail` or is read by its status), naming the fault by its kind, never by
what the client sent.  aiohttp still logs and counts the refusal as before
(`cli/logs.py` keeps those lines to one per interval).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

# What each kind of refusal says (checked in order: the first the error is an
# instance of).
_SAID: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "A request line or header is too long (8,190 bytes at most)"),
    (http_exceptions.ContentEncodingError, "The request body's Content-Encoding is not supported"),
    (http_exceptions.BadHttpMethod, "The request method is not valid HTTP"),
    (http_exceptions.HttpProcessingError, "The request is not valid HTTP"),
)


class JsonRefusals(RequestHandler):
    """aiohttp's protocol for one connection, its refusals in JSON (see above)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logged, checked
        said = None
        if status == 400:  # (a request not read; not a handler's failure)
            said = next((text for kind, text in _SAID if isinstance(exc, kind)), None)
        detail = said or (
            "Internal server error" if status >= 500 else f"{status} {HTTPStatus(status).phrase}"
        )
        answer = web.json_response({"detail": detail}, status=plain.status)
        answer.force_close()
        return answer


def json_refusals(server: web.Server) -> RequestHandler:
    """A protocol for one connection of `server`, as `server()` makes one; aiohttp's
    own where its options do not fit this class (another aiohttp: refusals in text)."""
    options: dict[str, Any] = getattr(server, "_kwargs", {})
    loop: asyncio.AbstractEventLoop = getattr(server, "_loop", asyncio.get_running_loop())
    try:
        return JsonRefusals(server, loop=loop, **options)
    except TypeError:
        return server()
