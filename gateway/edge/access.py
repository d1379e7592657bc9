"""Who asked what, and how it went: the request id and the access log.

Every HTTP request gets a request id: the `X-Request-ID` a trusted proxy sent
(GATEWAY_TRUSTED_PROXIES; at most 128 of `A-Z a-z 0-9 . _ : -`), or a new
one.  It goes back to the client in the `X-Request-ID` response header, into
every log line written while the request is handled (and by the tasks it
starts: a reply's), and to the model server in the upstream request's
`X-Request-ID`.

    middleware ─▶ Access(request id) in the request and in a context variable
        │            the authenticator fills in the user (`noted_user`)
        ▼
    handler … a reply task started here inherits the context: its log lines
        │     and its upstream request carry the same id
        ▼
    AccessLogger.log ─▶ one line per request (a WebSocket's when it closes):
                        method, path (never the query: it may hold a token),
                        status, duration, bytes, user id, request id

Connections (`connection_opened`/`connection_closed`) and replies
(`reply_ended`) log a line each too, with the same id.  Nothing in these lines
is a token, a key, a password or message text: paths are logged without
their query, and ids and counts are all a reply line holds.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from prometheus_client import Gauge

from gateway.edge import metrics
from gateway.text import printable

log = logging.getLogger("gateway.access")

HEADER = "X-Request-ID"
MAX_ID_CHARS = 128
_GOOD_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_CHARS}}}\Z")
# Logged at DEBUG: Socket.IO's long polls (every few seconds per open tab) and
# what probes and scrapers ask every few seconds.
_QUIET_PATH = re.compile(r"/socket\.io/?\Z|/(health|health/db|ready|metrics)\Z")


@dataclass(slots=True)
class Access:
    """One request's (or connection's) id and who it turned out to be."""

    request_id: str
    user_id: str | None = None
    # The flavour of the connection the request became (a socket, a stream), or that
    # it asked in (`noted_flavour`), if any.
    flavour: str | None = None


_CURRENT: contextvars.ContextVar[Access | None] = contextvars.ContextVar(
    "gateway_access", default=None
)
_KEY = web.RequestKey("access", Access)


def current_id() -> str | None:
    """The request id of the request (or reply) being handled, if any."""
    access = _CURRENT.get()
    return None if access is None else access.request_id


def noted_user(user_id: str) -> None:
    """The request being handled is this user's (called by the authenticator)."""
    access = _CURRENT.get()
    if access is not None:
        access.user_id = user_id


def noted_flavour(flavour: str) -> None:
    """The request being handled asks in this flavour (a reply it starts without a
    connection of its own, such as the web app's POST whose reply goes to its socket,
    logs it)."""
    access = _CURRENT.get()
    if access is not None:
        access.flavour = flavour


def request_ids(
    trusts: Callable[[str | None], bool],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware giving each request its id (`trusts`: is this peer a trusted proxy)."""

    @web.middleware
    async def request_id(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        access = request.get(_KEY)
        if access is None:
            given = request.headers.get(HEADER)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            trusted = trusts(peer[0] if isinstance(peer, tuple) else None)
            chosen = given if given and trusted and _GOOD_ID.match(given) else uuid.uuid4().hex
            access = request[_KEY] = Access(chosen)
        token = _CURRENT.set(access)
        try:
            return await handler(request)
        finally:
            _CURRENT.reset(token)

    return request_id


async def send_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request id back to the client."""
    access = request.get(_KEY)
    if access is not None:
        response.headers[HEADER] = access.request_id


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log hook: one line per request, and `gateway_http_requests_total`."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        metrics.HTTP_REQUESTS.labels(str(response.status)).inc()
        access = request.get(_KEY)
        level = logging.DEBUG if _QUIET_PATH.search(request.path) else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "%s %s %d",
            request.method,
            printable(request.path),  # (`%0d%0a` or `%00` would split the line)
            response.status,
            extra={
                "request_id": access.request_id if access else None,
                "user_id": access.user_id if access else None,
                "duration_ms": round(time * 1000, 1),
                "bytes": response.body_length,
                "remote": request.remote,
            },
        )


class OpenConnection:
    """A client connection, counted (`gateway_connections`) and logged while open;
    call it when the connection closes (logged again, with how long it lasted; once
    however often it is called).  Held by every open connection: slots, no dict."""

    __slots__ = ("_flavour", "_gauge", "_opened", "_request_id", "_transport", "_user_id")

    def __init__(self, transport: str, flavour: str, user_id: str | None = None) -> None:
        self._gauge: Gauge | None = metrics.connection(transport, flavour)
        current = _CURRENT.get()
        self._request_id = None if current is None else current.request_id
        if current is not None:
            current.flavour = flavour
            if user_id is None:
                user_id = current.user_id
        self._transport, self._flavour, self._user_id = transport, flavour, user_id
        self._opened = time.monotonic()
        log.info("connection opened", extra=self._fields())

    def _fields(self) -> dict[str, object]:
        return {
            "transport": self._transport,
            "flavour": self._flavour,
            "user_id": self._user_id,
            "request_id": self._request_id,
        }

    def identified(self, user_id: str) -> None:
        """Signed in after it opened (Socket.IO's `user-join`): its lines name the user."""
        if self._user_id != user_id:
            self._user_id = user_id
            log.info("connection identified", extra=self._fields())

    def __call__(self) -> None:
        if self._gauge is not None:
            self._gauge.dec()
            self._gauge = None
            took = round((time.monotonic() - self._opened) * 1000, 1)
            log.info("connection closed", extra={**self._fields(), "duration_ms": took})


def connection_opened(transport: str, flavour: str, user_id: str | None = None) -> OpenConnection:
    """A client connection opened (`user_id`: by default, whoever the request
    authenticated as); call what is returned when it closes."""
    return OpenConnection(transport, flavour, user_id)


def reply_ended(
    status: str,
    *,
    user_id: str,
    chat_id: str | None,
    message_id: str,
    model: str,
    took_s: float,
    chars: int,
    code: str | None = None,
) -> None:
    """A reply's one line: ids, how it ended, how long and how much (never its text);
    the flavour of the connection that asked for it, when it came by one."""
    current = _CURRENT.get()
    log.info(
        "reply %s",
        status,
        extra={
            "request_id": None if current is None else current.request_id,
            "flavour": None if current is None else current.flavour,
            "user_id": user_id or None,
            "chat_id": chat_id or None,
            "message_id": message_id or None,
            "model": model or None,
            "code": code,
            "duration_ms": round(took_s * 1000, 1),
            "chars": chars,
        },
    )
