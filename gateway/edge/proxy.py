"""Requests as the client made them, behind a reverse proxy we trust (and only then).

A proxy in front rewrites what the gateway sees: the peer is the proxy, the
scheme may be http where the client used https, the host may lack its port,
and a sub-path (`/chat/…`) may have been stripped.  Proxies say what the
client used in headers; the gateway believes them only from the addresses in
`GATEWAY_TRUSTED_PROXIES` (anyone can send such headers)::

    Forwarded: for=203.0.113.7;proto=https;host=chat.example.com    RFC 7239, first hop
    X-Forwarded-For: 203.0.113.7, 10.0.0.2    the client: the last address not ours
    X-Forwarded-Proto: https                  the scheme the client used
    X-Forwarded-Host: chat.example.com        the host (and port) the client used
    X-Forwarded-Prefix: /chat                 the sub-path the proxy stripped

From anyone else they are ignored, and that is logged once per peer.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PREFIX_KEY = web.RequestKey("forwarded_prefix", str)
_FORWARDED_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Forwarded-Prefix",
)
# Ignored peers already logged (bounded: a busy gateway must not grow it forever).
_LOGGED_MAX = 1024


def networks(entries: Iterable[str]) -> list[Network]:
    """CIDRs (or single addresses); raises ValueError naming a bad one."""
    parsed = []
    for entry in entries:
        try:
            parsed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or a CIDR") from None
    return parsed


def _first(value: str) -> str:
    return value.split(",")[0].strip()


def _forwarded(header: str) -> dict[str, str]:
    """The first hop of an RFC 7239 `Forwarded` header."""
    fields: dict[str, str] = {}
    for pair in _first(header).split(";"):
        name, _, value = pair.partition("=")
        if value:
            fields[name.strip().lower()] = value.strip().strip('"')
    return fields


def _hops(header: str, name: str) -> list[str]:
    """One field of every hop of a `Forwarded` header, in order."""
    values = []
    for hop in header.split(","):
        for pair in hop.split(";"):
            key, _, value = pair.partition("=")
            if key.strip().lower() == name and value:
                values.append(value)
    return values


def _address(node: str) -> str:
    """A client address without its port or brackets, as both headers may write it
    (RFC 7239 §6: `"[2001:db8::1]:4711"`, `192.0.2.43:47011`)."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


def _clean_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip().strip("/")
    return "" if prefix == "/" else prefix


class ProxyPolicy:
    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted = networks(trusted)
        self._logged: set[str] = set()

    def trusts(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        policy = self

        # Not a coroutine: it hands on the handler's own awaitable, so it keeps no
        # frame for as long as the request runs (a socket's whole life).
        @web.middleware
        def forwarded(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> Awaitable[web.StreamResponse]:
            if not any(name in request.headers for name in _FORWARDED_HEADERS):
                return handler(request)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            peer_ip = peer[0] if isinstance(peer, tuple) else None
            if not policy.trusts(peer_ip):
                policy._ignored(peer_ip)
                return handler(request)
            return handler(policy._as_sent(request))

        return forwarded

    def _as_sent(self, request: web.Request) -> web.Request:
        headers = request.headers
        hop = _forwarded(headers["Forwarded"]) if "Forwarded" in headers else {}
        changes: dict[str, str] = {}
        client = self._client(
            _hops(headers["Forwarded"], "for")
            if hop.get("for")
            else headers.get("X-Forwarded-For", "").split(",")
        )
        if client:
            changes["remote"] = client
        scheme = (hop.get("proto") or _first(headers.get("X-Forwarded-Proto", ""))).lower()
        if scheme in ("http", "https"):
            changes["scheme"] = scheme
        host = hop.get("host") or _first(headers.get("X-Forwarded-Host", ""))
        if host:
            changes["host"] = host
        cloned = request.clone(**changes) if changes else request  # type: ignore[arg-type]
        if "X-Forwarded-Prefix" in headers:
            cloned[PREFIX_KEY] = _clean_prefix(_first(headers["X-Forwarded-Prefix"]))
        return cloned

    def _client(self, chain: list[str]) -> str | None:
        """The client in a chain of forwarded addresses: the last one that is not one
        of our proxies.  The left end is whatever the client wrote, so an address is
        believed only as far as trusted proxies vouch for it."""
        addresses = [_address(node) for node in chain if node.strip()]
        for address in reversed(addresses):
            if not self.trusts(address):
                return address
        return addresses[0] if addresses else None

    def _ignored(self, peer: str | None) -> None:
        key = peer or "?"
        if key in self._logged or len(self._logged) >= _LOGGED_MAX:
            return
        self._logged.add(key)
        log.warning(
            "forwarded headers from an untrusted peer ignored; "
            "add the proxy's address to GATEWAY_TRUSTED_PROXIES if it is yours",
            extra={"peer": key},
        )


def prefix(request: web.Request, base_path: str = "") -> str:
    """The path the gateway lives under, as the client sees it (`/chat`, or "")."""
    forwarded: str = request.get(PREFIX_KEY, "")
    return forwarded + base_path


def external_url(request: web.Request, path: str, base_path: str = "") -> str:
    """`path` (e.g. "/c/123") as a URL the client can follow."""
    return f"{request.scheme}://{request.host}{prefix(request, base_path)}{path}"


UPGRADE_LINES = (
    "nginx needs, in this location: proxy_http_version 1.1; "
    "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade; "
    "(with map $http_upgrade $connection_upgrade { default upgrade; '' ''; } at the http level). "
    "Caddy's reverse_proxy upgrades by itself: check what else is in front"
)


def upgrade_required(request: web.Request) -> web.Response:
    """426 for a WebSocket path reached without `Upgrade: websocket`: a proxy in
    front dropped the hop-by-hop headers (or spoke HTTP/1.0)."""
    cause = "A proxy in front of the gateway dropped the upgrade headers."
    if request.version < (1, 1):
        cause = (
            f"The request arrived as HTTP/{request.version[0]}.{request.version[1]}: the proxy "
            "speaks HTTP/1.0 to the gateway (nginx's default before 1.29.7), which cannot upgrade."
        )
    detail = (
        "This is a WebSocket endpoint, and the request reached it without "
        f"'Upgrade: websocket'. {cause} {UPGRADE_LINES}."
    )
    return web.json_response({"detail": detail}, status=426)


STICKY_LINES = (
    "Socket.IO long-polling needs a sticky proxy: every request of one session must reach "
    "the same replica (nginx: `ip_hash;` in the upstream serving /ws/socket.io, or the "
    "affinity cookie of nginx/gateway.conf: `hash $gw_affinity consistent;` with its "
    "`map $cookie_gw_affinity` blocks and `add_header Set-Cookie $gw_set_affinity always;`; "
    "Caddy: lb_policy cookie, or lb_policy ip_hash for clients that keep no cookies)"
)
