"""The deployment under test: its URL, how to reach each gateway path, the client sessions.

URL may carry a sub-path (`https://chat.example.com/chat`); every probed path
is URL + the gateway's own path, and the Socket.IO path is
`<sub-path>/ws/socket.io`.  The doctor is a client: it reads no gateway
settings, only what it is told on the command line.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from gateway.doctor.report import Skip
from gateway.edge import redact

# The gateway's Socket.IO route (gateway/transports/socketio.py), not imported:
# that module brings the whole server with it.
SOCKETIO_PATH = "/ws/socket.io"
USER_AGENT = "gateway-doctor"
# What a body excerpt in a FAIL line may be.
EXCERPT_CHARS = 400


class UsageError(ValueError):
    """A URL or option the doctor cannot work with."""


@dataclass(frozen=True, slots=True)
class Options:
    token: str | None = None
    origin: str | None = None
    slow: bool = False
    idle_seconds: float = 65.0
    polls: int = 10
    model: str | None = None
    timeout: float = 20.0
    insecure: bool = False


@dataclass(slots=True)
class Findings:
    """What later checks need from earlier ones."""

    reachable: bool = False
    token_ok: bool = False
    model: str | None = None
    # Route name → whether its WebSocket handshake got 101.
    upgrades: dict[str, bool] = field(default_factory=dict)
    # Engine.IO refused websocket itself: ENABLE_WEBSOCKET_SUPPORT=false.
    socketio_polling_only: bool = False
    # Every polling session stayed on its replica (False: see socketio-polling).
    polling_sticky: bool = True

    def require_token(self, target: Target) -> None:
        if not target.token:
            raise Skip("needs --token")
        if not self.token_ok:
            raise Skip("the token was not accepted (see token)")

    def require_upgrade(self, route: str) -> None:
        if not self.upgrades.get(route, False):
            raise Skip(f"the WebSocket upgrade failed on the {route} path (see websocket-upgrade)")


def doctor_name() -> str:
    """A fresh name for what the doctor creates (chats, sessions, assistants)."""
    return f"doctor-{secrets.token_hex(4)}"


_USER_INFO = re.compile(r"//[^/@\s]*@")


def gateway_url(url: str) -> URL:
    """A gateway's URL as an operator gives it (`doctor`, `admin stats --url`,
    `trace --url`): http(s), a host and a port that can be, no credentials, query or
    fragment; else `UsageError`, one line that shows the URL masked."""
    # Shown masked, the user part too (a token given as the URL's user).
    shown = repr(_USER_INFO.sub("//***@", redact.url(url.strip())))
    try:
        parsed = URL(url.strip())
        origin = parsed.origin() if parsed.host else None  # (checks the port)
    except ValueError as exc:
        raise UsageError(f"{shown} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or origin is None:
        raise UsageError(f"{shown} is not an http:// or https:// URL")
    if parsed.user or parsed.password:
        raise UsageError(f"{shown}: give the URL without credentials (a token: --token)")
    if parsed.query_string or parsed.fragment:
        raise UsageError(f"{shown}: give the URL without a query or a fragment")
    return parsed


class Target:
    def __init__(
        self, url: str, options: Options, progress: Callable[[str], None] | None = None
    ) -> None:
        parsed = gateway_url(url)
        # Told how a long check is going ("idle-stream: 20/65 s idle"); None: say nothing.
        self.progress = progress or (lambda _: None)
        self.options = options
        self.root = str(parsed.origin())
        self.sub_path = parsed.path.rstrip("/")
        self.base = self.root + self.sub_path
        self.sio_path = self.sub_path + SOCKETIO_PATH
        self._session: aiohttp.ClientSession | None = None

    @property
    def token(self) -> str | None:
        return self.options.token

    def url(self, path: str, with_token: bool = False) -> str:
        """URL + `path`; raw WebSockets take the token as `?token=` (`with_token`).
        aiohttp's WebSocket client takes http(s):// URLs as they are."""
        url = self.base + path
        if with_token and self.token:
            sep = "&" if "?" in url else "?"
            url += f"{sep}token={urllib.parse.quote(self.token, safe='')}"
        return url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def new_session(self) -> aiohttp.ClientSession:
        """A browser-like client: keeps cookies even for an IP host (cookie-based
        stickiness), and skips TLS verification only with --insecure."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.timeout, sock_read=self.options.timeout
        )
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=not self.options.insecure),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self.new_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def excerpt(text: str) -> str:
    """A body as a FAIL line shows it: JSON's `detail`/`message` when there is one."""
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        for value in (
            body.get("detail"),
            error.get("message") if isinstance(error, dict) else None,
            body.get("message"),
        ):
            if isinstance(value, str) and value:
                text = value
                break
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:  # a proxy's HTML error page: its title says it
        text = title.group(1)
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
