"""PostgreSQL restarted under a running gateway: while it is down every request fails
cleanly in its client's protocol (no 500, no traceback), `/ready` says the store is
down, and once it is back everything works again without restarting the gateway."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import websockets

from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import PostgresServer

TIMEOUT_S = 20


@pytest.fixture
def database() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


async def chat_over_rest(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> int:
    body = {"chat": {"title": "outage", "messages": []}}
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{gw.url}/api/v1/chats/new", json=body, headers=headers) as resp:
        answer = await resp.json()
        assert "Traceback" not in json.dumps(answer)
        return resp.status


async def nadoo_turn(gw: GatewayProcess, token: str) -> dict[str, Any]:
    """The turn's last frame; a socket closed instead: {"closed": its code, "reason"}."""
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/o-{uuid.uuid4().hex[:6]}?token={token}"
    try:
        async with websockets.connect(url) as ws:
            json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))  # connected
            ask = {"type": "chat", "content": "hi", "application_id": "fake-model"}
            await ws.send(json.dumps(ask))
            while True:
                frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                if frame["type"] in ("response_end", "error"):
                    return frame
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None
        return {"closed": exc.rcvd.code, "reason": exc.rcvd.reason}


async def test_a_database_restart_fails_requests_cleanly_then_recovers(
    start_gateway: Any, fake_upstream: FakeUpstream, database: PostgresServer
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "DATABASE_URL": database.url}
    )
    token = make_token(f"outage-{uuid.uuid4().hex[:6]}")
    async with aiohttp.ClientSession() as http:
        assert await chat_over_rest(http, gw, token) == 200
        assert (await nadoo_turn(gw, token))["type"] == "response_end"

        database.stop()
        status = await chat_over_rest(http, gw, token)
        assert status == 503, status
        # A user seen a moment ago is remembered (application/accounts.py): the socket
        # opens and the turn is refused in Nadoo's own frame.
        frame = await nadoo_turn(gw, token)
        assert (frame["type"], frame["code"]) == ("error", "store_unavailable"), frame
        assert frame["message"] == "The database is unavailable; try again shortly"
        # Who a new token is cannot be looked up: that socket is refused "try again later".
        newcomer = make_token(f"outage-{uuid.uuid4().hex[:6]}")
        assert await nadoo_turn(gw, newcomer) == {
            "closed": 1013,
            "reason": "The database is unavailable; try again shortly",
        }
        async with http.get(f"{gw.url}/ready?upstreams=0") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["store"] == "failed"

        database.start()
        deadline = time.monotonic() + TIMEOUT_S
        while (status := await chat_over_rest(http, gw, token)) != 200:
            assert time.monotonic() < deadline, f"still {status} after the database came back"
            await asyncio.sleep(0.2)
        assert (await nadoo_turn(gw, token))["type"] == "response_end"
    log = gw.log()
    assert "Traceback" not in log, log[-3000:]
