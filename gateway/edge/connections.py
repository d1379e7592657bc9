"""Client connections: how many, from whom, and how long a slow one may take.

aiohttp bounds none of this on its own, and a client that opens connections
and sends nothing (or one byte at a time) would hold a file descriptor each
until the process runs out and stops accepting anyone — `/health` included
(SECURITY.md, "Connections and slow clients").  So:

    accept ─▶ ConnectionGuard: over GATEWAY_MAX_CONNECTIONS → 503, over
              GATEWAY_MAX_CONNECTIONS_PER_ADDRESS from one address (an IPv6 /64;
              trusted proxies excepted) → 429, written at once and closed
           ─▶ aiohttp's protocol: the request line and headers must be in within
              GATEWAY_KEEPALIVE_TIMEOUT_S of the connection's start or of the
              previous response (aiohttp's keep-alive timer closes a connection
              still waiting for a whole request then)
           ─▶ body_deadline: the body within GATEWAY_REQUEST_BODY_TIMEOUT_S of the
              headers, or 408 and the connection is closed

The total is also kept below the open-files limit (`effective_max_connections`),
and failures to accept (EMFILE: out of descriptors) are logged once per
interval with a count (`AcceptErrorLog`) instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from gateway.edge.refusals import json_refusals

log = logging.getLogger(__name__)

# One log line per this many seconds for each kind of refusal or accept error.
LOG_INTERVAL_S = 10.0
# A refused connection is answered, then read (and discarded) for at most this
# long, so the answer is not lost to a reset; at most MAX_LINGERING at once (past
# that, refused connections are reset at once: a flood must not hold descriptors).
REFUSAL_LINGER_S = 1.0
MAX_LINGERING = 64
# Descriptors kept for everything but client connections (the listening socket,
# the database, Redis, log files, a few upstream connections).
FD_RESERVE = 128
# Connections the kernel completes and queues while the loop is busy, before it
# drops SYNs (a dropped SYN is sent again only after 1 s, then 3, then 7: a burst
# of tabs reconnecting after a replica restart would wait seconds).  aiohttp's
# default is 128; the kernel caps it at net.core.somaxconn (4096 on Linux ≥ 5.4).
LISTEN_BACKLOG = 2048
SERVER_HEADER = "chat-gateway"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(status: str, text: str, retry_after_s: int) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\nServer: {SERVER_HEADER}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after_s}\r\nConnection: close\r\n\r\n"
    ).encode() + body


TOO_MANY = _answer("503 Service Unavailable", "Too many connections; try again shortly.\n", 1)
TOO_MANY_FROM_YOU = _answer(
    "429 Too Many Requests", "Too many connections from your address; close some first.\n", 1
)
TIMED_OUT = (
    f"HTTP/1.1 408 Request Timeout\r\nServer: {SERVER_HEADER}\r\nContent-Length: 0\r\n"
    "Connection: close\r\n\r\n"
).encode()


class EveryInterval:
    """A warning at most once per `interval_s`, saying how many times it happened."""

    def __init__(
        self, logger: logging.Logger | None = None, interval_s: float = LOG_INTERVAL_S
    ) -> None:
        self._log = logger or log
        self._interval_s = interval_s
        self._last = float("-inf")
        self._count = 0

    def note(self, message: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        if self._last != float("-inf"):
            message += f" ({self._count} times in the last {now - self._last:.0f} s)"
        self._log.warning(message, *args)
        self._last, self._count = now, 0


def address_key(peer: str) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one
    subscriber's allocation: an attacker has all of its addresses)."""
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class PerAddress:
    """How many of something each address holds, against a limit (None: none).  The
    key "" (a trusted proxy's, which carries many clients) counts nothing."""

    __slots__ = ("_counts", "exempt", "limit")

    def __init__(self, limit: int | None, exempt: Callable[[str], bool]) -> None:
        self.limit = limit
        self.exempt = exempt
        self._counts: dict[str, int] = {}

    def key(self, peer: str) -> str:
        """Whom `peer` counts against: "" when exempt, else its `address_key`."""
        return "" if not peer or self.exempt(peer) else address_key(peer)

    def full(self, key: str) -> bool:
        return bool(key) and self.limit is not None and self._counts.get(key, 0) >= self.limit

    def add(self, key: str) -> None:
        if key:
            self._counts[key] = self._counts.get(key, 0) + 1

    def remove(self, key: str) -> None:
        if key:
            left = self._counts.get(key, 1) - 1
            if left > 0:
                self._counts[key] = left
            else:
                self._counts.pop(key, None)


class ConnectionGuard:
    """Counts open client connections, in total and per address."""

    def __init__(
        self,
        max_total: int,
        max_per_address: int | None,
        exempt: Callable[[str], bool] = lambda peer: False,
    ) -> None:
        self.max_total = max_total
        self.open = 0
        self._by_address = PerAddress(max_per_address, exempt)
        self.lingering = 0
        self._total_refusals = EveryInterval()
        self._address_refusals = EveryInterval()

    def admit(self, peer: str) -> tuple[str | None, bytes | None]:
        """(the key the connection counts against, None), or (None, the refusal)."""
        if self.open >= self.max_total:
            self._total_refusals.note(
                "connection refused: %d open, GATEWAY_MAX_CONNECTIONS reached", self.open
            )
            return None, TOO_MANY
        key = self._by_address.key(peer)
        if self._by_address.full(key):
            self._address_refusals.note(
                "connection from %s refused: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS (%d) reached",
                key,
                self._by_address.limit,
            )
            return None, TOO_MANY_FROM_YOU
        self.open += 1
        self._by_address.add(key)
        return key, None

    def release(self, key: str) -> None:
        self.open -= 1
        self._by_address.remove(key)


class _Guarded(asyncio.Protocol):
    """One accepted connection: handed to aiohttp's protocol when admitted; else
    answered, read to its end (briefly) and closed."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._key = ""
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        key, refusal = self._guard.admit(host)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self._key = key or ""
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport, answer: bytes) -> None:
        transport.write(answer)
        if self._guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.abort()
            return
        # Our half closed after the answer; the client's request is read and
        # dropped until it closes too (closing with it unread would reset the
        # connection and could lose the answer), for a bounded time.
        self._guard.lingering += 1
        transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return False  # refused: the client is done, close

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._guard.release(self._key)
            self._inner.connection_lost(exc)
        elif self._linger is not None:
            self._linger.cancel()
            self._guard.lingering -= 1


class GuardedSite(web.BaseSite):
    """`web.TCPSite` with every accepted connection passing the guard first."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(guard, functools.partial(json_refusals, server)),
            self._host,
            self._port,
            backlog=self._backlog,
        )


def body_deadline(timeout_s: float) -> Any:
    """Middleware: a request body must be in within `timeout_s` of its headers; a
    client still sending then gets 408 and its connection is closed (which cancels
    the handler waiting for the body).  aiohttp has no such timeout of its own."""
    slow = EveryInterval()

    # Not a coroutine: a request with no body to wait for (a socket's handshake, a
    # GET) gets the handler's own awaitable, and no frame is kept for its life.
    @web.middleware
    def deadline(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if not request.body_exists or not request.can_read_body:
            return handler(request)
        return timed(request, handler)

    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport

        def expire() -> None:
            if not request.can_read_body or transport is None or transport.is_closing():
                return
            slow.note("request body not in after %.0f s: connection closed", timeout_s)
            if request.writer.output_size == 0:
                transport.write(TIMED_OUT)
            transport.close()

        handle = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            return await handler(request)
        finally:
            handle.cancel()

    return deadline


class AcceptErrorLog:
    """The event loop's exception handler: a failed accept() (out of descriptors,
    EMFILE/ENFILE, or of memory) becomes one line per interval with a count, not a
    traceback each time asyncio retries; anything else goes to the default handler."""

    RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._rate = EveryInterval()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        accepting = str(context.get("message", "")).startswith("socket.accept()")
        if accepting or (isinstance(exc, OSError) and exc.errno in self.RESOURCE_ERRORS):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._rate.note(
                "cannot accept connections: %s; raise the open-files limit (ulimit -n) or "
                "lower GATEWAY_MAX_CONNECTIONS (%d)",
                reason,
                self._max_connections,
            )
            return
        loop.default_exception_handler(context)


def effective_max_connections(configured: int) -> int:
    """`configured`, or fewer if the open-files limit (raised to its hard limit
    first) could not hold that many connections besides `FD_RESERVE`."""
    try:
        import resource
    except ImportError:  # not a Unix: no such limit to respect
        return configured
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or configured <= soft - FD_RESERVE:
        return configured
    allowed = max(1, soft - FD_RESERVE)
    log.warning(
        "GATEWAY_MAX_CONNECTIONS=%d does not fit the open-files limit (%d); at most %d "
        "client connections (raise ulimit -n to allow more)",
        configured,
        soft,
        allowed,
    )
    return allowed
