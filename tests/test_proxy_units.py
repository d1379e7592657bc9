"""`gateway/proxy.py` without a process: what the middleware makes a request say, per
header set and per peer, and the URLs and 426 answers built from it.

The requests are aiohttp's mocked ones with a transport that names the peer, so
each row of a table is one request through the real middleware."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.test_utils import make_mocked_request

from gateway.edge.proxy import ProxyPolicy, external_url, networks, prefix, upgrade_required

LOOPBACK = "127.0.0.1"
STRANGER = "198.51.100.9"


class Transport:
    """Just enough of asyncio's transport for `request.remote` and the middleware."""

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 50000) if name == "peername" else default


async def seen(
    headers: dict[str, str], peer: str = LOOPBACK, policy: ProxyPolicy | None = None
) -> dict[str, str]:
    """What a handler behind the middleware believes about a request to /c/1."""
    policy = policy or ProxyPolicy(["127.0.0.1/32", "::1/128"])
    request = make_mocked_request(
        "GET", "/c/1", {"Host": "10.0.0.5:8080", **headers}, transport=Transport(peer)
    )
    believed: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        believed.update(
            remote=str(request.remote),
            scheme=request.scheme,
            host=request.host,
            prefix=prefix(request),
            url=external_url(request, "/c/1"),
        )
        return web.Response()

    await policy.middleware()(request, handler)
    return believed


AS_RECEIVED = {
    "remote": LOOPBACK,
    "scheme": "http",
    "host": "10.0.0.5:8080",
    "prefix": "",
    "url": "http://10.0.0.5:8080/c/1",
}


# -- from a trusted peer: each header, then RFC 7239 ------------------------------------
@pytest.mark.parametrize(
    ("headers", "changed"),
    [
        ({}, {}),
        # The client is the last address that is not one of our proxies: 10.0.0.2 is
        # not trusted here, so whatever it wrote before its own address is not believed.
        ({"X-Forwarded-For": "203.0.113.7, 10.0.0.2"}, {"remote": "10.0.0.2"}),
        ({"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}, {"remote": "203.0.113.7"}),
        (
            {"X-Forwarded-Proto": "https"},
            {"scheme": "https", "url": "https://10.0.0.5:8080/c/1"},
        ),
        (
            {"X-Forwarded-Proto": "HTTPS"},
            {"scheme": "https", "url": "https://10.0.0.5:8080/c/1"},
        ),
        # Not a scheme the gateway could be reached with: ignored.
        ({"X-Forwarded-Proto": "gopher"}, {}),
        (
            {"X-Forwarded-Host": "chat.example.com:8443"},
            {"host": "chat.example.com:8443", "url": "http://chat.example.com:8443/c/1"},
        ),
        (
            {"X-Forwarded-Prefix": "/chat/"},
            {"prefix": "/chat", "url": "http://10.0.0.5:8080/chat/c/1"},
        ),
        (
            {"X-Forwarded-Prefix": "chat"},
            {"prefix": "/chat", "url": "http://10.0.0.5:8080/chat/c/1"},
        ),
        ({"X-Forwarded-Prefix": "/"}, {}),
        (
            {
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "chat.example.com",
                "X-Forwarded-Prefix": "/chat",
            },
            {
                "remote": "203.0.113.7",
                "scheme": "https",
                "host": "chat.example.com",
                "prefix": "/chat",
                "url": "https://chat.example.com/chat/c/1",
            },
        ),
        # RFC 7239: proto and host from the first hop; values may be quoted, addresses
        # may carry a port, IPv6 ones in brackets (§6).
        (
            {"Forwarded": 'for="[2001:db8::7]:4711";proto=https;host="chat.example.com"'},
            {
                "remote": "2001:db8::7",
                "scheme": "https",
                "host": "chat.example.com",
                "url": "https://chat.example.com/c/1",
            },
        ),
        ({"Forwarded": "for=192.0.2.43:47011, for=10.0.0.2"}, {"remote": "10.0.0.2"}),
        ({"Forwarded": "for=192.0.2.43:47011, for=127.0.0.1"}, {"remote": "192.0.2.43"}),
        (
            {"Forwarded": "For=192.0.2.43;Proto=https"},
            {"remote": "192.0.2.43", "scheme": "https", "url": "https://10.0.0.5:8080/c/1"},
        ),
        # Forwarded wins over the X- headers where both say something.
        (
            {"Forwarded": "proto=https", "X-Forwarded-Proto": "http"},
            {"scheme": "https", "url": "https://10.0.0.5:8080/c/1"},
        ),
    ],
)
async def test_a_trusted_proxy_is_believed(
    headers: dict[str, str], changed: dict[str, str]
) -> None:
    assert await seen(headers) == AS_RECEIVED | changed


async def test_a_client_cannot_pose_as_another_through_a_chain_of_proxies() -> None:
    """Two proxies of ours (10.0.0.0/8 and loopback) in front: the client is the
    address the outer one saw, not what the client itself put in the header."""
    policy = ProxyPolicy(["127.0.0.1/32", "10.0.0.0/8"])
    forged = {"X-Forwarded-For": "192.0.2.1, 203.0.113.7, 10.0.0.2"}
    assert (await seen(forged, policy=policy))["remote"] == "203.0.113.7"
    only_ours = {"X-Forwarded-For": "10.0.0.3, 10.0.0.2"}
    assert (await seen(only_ours, policy=policy))["remote"] == "10.0.0.3"


async def test_an_ipv6_proxy_and_a_network_are_trusted() -> None:
    policy = ProxyPolicy(["10.0.0.0/8", "fd00::/8"])
    for peer in ("10.20.30.40", "fd00::1"):
        believed = await seen({"X-Forwarded-Proto": "https"}, peer, policy)
        assert believed["scheme"] == "https", peer
    assert policy.trusts("fe80::1%eth0") is False
    assert ProxyPolicy(["fe80::/10"]).trusts("fe80::1%eth0") is True
    assert policy.trusts(None) is False and policy.trusts("not-an-address") is False


# -- from anyone else ------------------------------------------------------------------
async def test_an_untrusted_peer_is_not_believed_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ProxyPolicy(["10.0.0.0/8"])
    spoofed = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "chat.example.com",
        "X-Forwarded-Prefix": "/chat",
        "Forwarded": "for=203.0.113.8;proto=https;host=evil.example",
    }
    with caplog.at_level(logging.WARNING, logger="gateway.edge.proxy"):
        for _ in range(3):
            assert await seen(spoofed, LOOPBACK, policy) == AS_RECEIVED
        await seen(spoofed, STRANGER, policy)
        # A request without forwarded headers is no news about its peer.
        await seen({}, "198.51.100.10", policy)
    peers = [record.__dict__["peer"] for record in caplog.records]
    assert peers == [LOOPBACK, STRANGER]
    assert "GATEWAY_TRUSTED_PROXIES" in caplog.records[0].getMessage()


# -- settings, URLs, 426 -------------------------------------------------------------
def test_networks_name_the_bad_entry() -> None:
    assert [str(n) for n in networks(["10.1.2.3/8", " ::1 "])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an address or a CIDR")):
        networks(["127.0.0.1", "10.0.0.0/33"])


async def test_the_base_path_follows_the_forwarded_prefix() -> None:
    request = make_mocked_request("GET", "/x", {"Host": "gw:8080"})
    assert prefix(request, "/chat") == "/chat"
    assert external_url(request, "/c/1", "/chat") == "http://gw:8080/chat/c/1"
    believed: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        believed.append(external_url(request, "/c/1", "/chat"))
        return web.Response()

    forwarded = make_mocked_request(
        "GET",
        "/x",
        {"Host": "gw:8080", "X-Forwarded-Prefix": "/outer", "X-Forwarded-Proto": "https"},
        transport=Transport(LOOPBACK),
    )
    await ProxyPolicy([LOOPBACK]).middleware()(forwarded, handler)
    assert believed == ["https://gw:8080/outer/chat/c/1"]


@pytest.mark.parametrize(
    ("version", "named", "not_named"),
    [
        (HttpVersion11, "dropped the upgrade headers", "HTTP/1.0"),
        (HttpVersion10, "arrived as HTTP/1.0", "dropped the upgrade headers"),
    ],
)
async def test_426_names_the_cause_and_the_lines(version: Any, named: str, not_named: str) -> None:
    response = upgrade_required(make_mocked_request("GET", "/ws/chat/s", version=version))
    assert response.status == 426 and response.content_type == "application/json"
    assert response.text is not None
    for line in (
        named,
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "map $http_upgrade $connection_upgrade",
    ):
        assert line in response.text
    assert not_named not in response.text
