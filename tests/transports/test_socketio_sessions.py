"""Engine.IO sessions are bounded as connections are (a probe of LIMITS.md, 2026-12-07):

    long-polling sessions from one address
        was: a polling session holds no connection between its requests, so the
             connection bounds never saw it: one address opened 35,000 sessions
             (RSS 87 → 391 MB), each with its seat, outbox and lease once connected
        now: past GATEWAY_MAX_CONNECTIONS_PER_ADDRESS from one address, 429; past
             GATEWAY_MAX_CONNECTIONS in all, 503; each counted until it closes

Loopback is a trusted proxy by default (exempt, as for connections): these gateways
trust another address, so the tests' own connections count.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import socketio

from tests.api.test_nadoo_ws import user
from tests.clients import PySocket
from tests.gatewayproc import GatewayProcess

HANDSHAKE = "/ws/socket.io/?EIO=4&transport=polling"
NOT_LOOPBACK = {"GATEWAY_TRUSTED_PROXIES": "10.255.255.1/32"}


async def handshake(http: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
    """A new polling session: (200, its sid), or (the refusal's status, its body)."""
    async with http.get(f"{base}{HANDSHAKE}") as resp:
        text = await resp.text()
        if resp.status != 200:
            assert resp.headers["Retry-After"] == "1"
            return resp.status, json.loads(text)
    return 200, json.loads(text[text.index("{") :])["sid"]


async def close(http: aiohttp.ClientSession, base: str, sid: str) -> None:
    """The client's own close (an Engine.IO close packet)."""
    async with http.post(f"{base}{HANDSHAKE}&sid={sid}", data=b"1") as resp:
        assert resp.status == 200


async def test_sessions_from_one_address_are_bounded_and_counted_until_they_close(
    start_gateway: Any,
) -> None:
    gw: GatewayProcess = start_gateway({**NOT_LOOPBACK, "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    async with aiohttp.ClientSession() as http:
        sids = []
        for _ in range(5):
            status, sid = await handshake(http, gw.url)
            assert status == 200
            sids.append(sid)
        status, body = await handshake(http, gw.url)
        assert status == 429, body
        assert body == {"detail": "Too many Socket.IO sessions from your address; close some first"}
        await close(http, gw.url, sids.pop())
        assert (await handshake(http, gw.url))[0] == 200
        assert (await handshake(http, gw.url))[0] == 429
    # A real client is refused in its own protocol (a connect error), and is let in
    # once a session has closed.
    _, token = user()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await PySocket().connect(gw.url, token)
    async with aiohttp.ClientSession() as http:
        await close(http, gw.url, sids.pop())
    sock = await PySocket().connect(gw.url, token)
    await sock.close()
    assert "Traceback" not in gw.log()


async def test_sessions_in_all_are_bounded_by_the_connection_limit(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway(
        {
            **NOT_LOOPBACK,
            "GATEWAY_MAX_CONNECTIONS": "6",
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
        }
    )
    connector = aiohttp.TCPConnector(limit=1)  # one connection: the sessions are what count
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(6):
            assert (await handshake(http, gw.url))[0] == 200
        status, body = await handshake(http, gw.url)
        assert (status, body) == (503, {"detail": "Too many Socket.IO sessions; try again shortly"})
        async with http.get(f"{gw.url}/health") as resp:
            assert resp.status == 200  # the gateway itself still answers
