"""The fixes the doctor prints, each written once, and network errors in plain words.

The nginx lines match the shipped `nginx/gateway.conf` and
`nginx/snippets/gateway-proxy.conf`; the Caddy ones `caddy/Caddyfile`.
"""

from __future__ import annotations

import ssl

import aiohttp

from gateway.doctor.report import Fault

UPGRADE = (
    "nginx: in EVERY location that proxies to the gateway (include "
    "snippets/gateway-proxy.conf in each; a location that sets any proxy_set_header of its "
    "own inherits none): proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    "proxy_set_header Connection $connection_upgrade;",
    "nginx, at the http level: map $http_upgrade $connection_upgrade { default upgrade; '' ''; }",
    "Caddy: reverse_proxy upgrades by itself; check that nothing else in front (a CDN, a "
    "load balancer, another proxy) drops the Upgrade header",
)
STICKY = (
    "nginx: ip_hash; in the upstream that serves /ws/socket.io (the simplest), or the "
    "affinity cookie of nginx/gateway.conf: hash $gw_affinity consistent; in upstream "
    "gateway_sticky, with its two map $cookie_gw_affinity blocks and add_header Set-Cookie "
    "$gw_set_affinity always; in the Socket.IO location",
    "Caddy: lb_policy cookie in the reverse_proxy for /ws/socket.io, with one upstream per "
    "replica (lb_policy ip_hash when polling clients keep no cookies)",
)
BUFFERING = (
    "nginx: proxy_buffering off; (and proxy_cache off;) in the location that serves "
    "…/chat/completions, and no proxy_ignore_headers X-Accel-Buffering; (the gateway "
    "sends X-Accel-Buffering: no)",
    "Caddy: flush_interval -1 in the reverse_proxy block",
    "nothing in front may compress or buffer text/event-stream (a CDN, gzip on for it)",
)
IDLE = (
    "nginx: proxy_read_timeout 3600s; proxy_send_timeout 3600s; in the WebSocket and SSE locations",
    "load balancers (AWS ALB, Cloudflare, …): an idle timeout above 30 s (the gateway "
    "pings every 25 s) and no limit on how long a connection may stay open",
)
TOKEN = (
    "a JWT signed with the gateway's WEBUI_SECRET_KEY (gateway token --user ID, on a "
    "machine with the gateway's settings), or an API key (gateway apikey create --user ID)",
)
PROXY_REACHES_GATEWAY = (
    "the proxy cannot reach the gateway: is it running, and is the upstream address "
    "right? (nginx: the error log; Caddy: its log)",
)


def sub_path_404(sub_path: str) -> tuple[str, ...]:
    if not sub_path:
        return (
            "is URL the gateway's? When it lives under a sub-path (GATEWAY_BASE_PATH, or a "
            "proxy location like /chat/), put that path in URL",
        )
    return (
        f"gateway: GATEWAY_BASE_PATH={sub_path} when requests reach it with {sub_path} still "
        "in the path",
        f"or a proxy that strips the prefix and says so: nginx: location {sub_path}/ {{ include "
        f"snippets/gateway-proxy.conf; proxy_pass http://gateway/; }} (the trailing / strips "
        f"it) and set $gateway_prefix {sub_path}; in the server (the snippet sends it as "
        f"X-Forwarded-Prefix); Caddy: handle_path {sub_path}/* {{ reverse_proxy … "
        f"{{ header_up X-Forwarded-Prefix {sub_path} }} }}",
        "and GATEWAY_TRUSTED_PROXIES naming the proxy's address, so the gateway believes "
        "X-Forwarded-Prefix",
    )


def base_path_elsewhere(root: str, base_path: str) -> tuple[str, ...]:
    return (
        f"clients (and the doctor) use {root}{base_path}: put {base_path} in URL",
        f"a proxy must not strip {base_path} while GATEWAY_BASE_PATH is set (nginx: proxy_pass "
        "http://gateway; without a trailing slash; Caddy: handle, not handle_path), or unset "
        f"GATEWAY_BASE_PATH and have the proxy send X-Forwarded-Prefix: {base_path}",
    )


def http_status(status: int) -> tuple[str, tuple[str, ...]]:
    """What an unexpected status from the proxy or the gateway means, and what to do."""
    meanings: dict[int, tuple[str, tuple[str, ...]]] = {
        401: (
            "something refused the request before the gateway's own checks",
            (
                "an authentication layer in front (basic auth, forward auth, an access proxy) "
                "must let these paths through",
            ),
        ),
        403: (
            "forbidden: the gateway refused the Origin, or a firewall/WAF in front refused "
            "the request",
            ("CORS_ALLOW_ORIGIN must list the page's origin; a WAF must allow WebSocket",),
        ),
        404: (
            "no route: the proxy does not forward this path to the gateway",
            (
                "every gateway path (/ws/, /v1/, /api/, /ragflow/) must reach the gateway",
                "under a sub-path, clients put it in their Socket.IO path too, e.g. "
                "path: '/chat/ws/socket.io' (socket.io-client), socketio_path= (python-socketio)",
            ),
        ),
        502: ("bad gateway: the proxy got no valid answer from the gateway", PROXY_REACHES_GATEWAY),
        503: (
            "service unavailable: the proxy has no healthy gateway to send to",
            PROXY_REACHES_GATEWAY,
        ),
        504: ("gateway timeout: the proxy waited too long for the gateway", PROXY_REACHES_GATEWAY),
    }
    return meanings.get(status, (f"unexpected HTTP {status}", ()))


def network_fault(exc: BaseException, timeout_s: float, what: str = "") -> Fault:
    """A client-side error as a fault a person can act on (never a traceback);
    `what` ("handshake") starts the detail."""
    what = f"{what}: " if what else ""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return Fault(
            f"{what}the TLS certificate is not trusted ({exc.certificate_error})",
            (
                "a self-signed certificate: add --insecure; otherwise give the server a "
                "certificate from a CA clients trust (Caddy gets one itself for a public name)",
            ),
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return Fault(
            f"{what}the TLS handshake failed ({exc})",
            ("does this port speak TLS? https:// on a plain-HTTP port fails like this",),
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or str(exc.os_error)
        if isinstance(exc.os_error, ConnectionRefusedError):
            why = "connection refused"
        return Fault(
            f"{what}cannot connect to {exc.host}:{exc.port} ({why})",
            (
                "is the gateway (or the proxy in front of it) running and listening there? "
                "Check the host, the port and firewalls",
            ),
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Fault(
            f"{what}the server closed the connection without answering",
            ("http:// on a TLS port looks like this; otherwise see the proxy's error log",),
        )
    if isinstance(exc, TimeoutError):
        return Fault(
            f"{what}no answer within {timeout_s:g} s",
            (
                "raise --timeout if the "
                "link or the model is slow; otherwise see the proxy's and gateway's logs",
            ),
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Fault(f"{what}{type(exc).__name__}: {exc}")
    return Fault(f"{what}unexpected {type(exc).__name__}: {exc}")
