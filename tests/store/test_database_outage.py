"""PostgreSQL restarted under a running gateway: while it is down every request fails
cleanly in its client's protocol (no 500, no traceback), `/ready` says the store is
down, and once it is back everything works again without restarting the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import websockets

from tests.fakes.upstream import FakeUpstream, deltas_of
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import PostgresServer

TIMEOUT_S = 20


@pytest.fixture
def database() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def gw(start_gateway: Any, fake_upstream: FakeUpstream, database: PostgresServer) -> GatewayProcess:
    """A gateway on the test's own PostgreSQL and the fake model server."""
    started: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "DATABASE_URL": database.url}
    )
    return started


def socket_url(gw: GatewayProcess, token: str) -> str:
    """A Nadoo chat socket's address, a session of its own."""
    return f"ws://127.0.0.1:{gw.port}/ws/chat/o-{uuid.uuid4().hex[:6]}?token={token}"


async def ask(ws: Any, model: str) -> None:
    """The socket's `connected` read, then a question to `model`."""
    json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))  # connected
    await ws.send(json.dumps({"type": "chat", "content": "hi", "application_id": model}))


async def chat_over_rest(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> int:
    body = {"chat": {"title": "outage", "messages": []}}
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{gw.url}/api/v1/chats/new", json=body, headers=headers) as resp:
        answer = await resp.json()
        assert "Traceback" not in json.dumps(answer)
        return resp.status


async def nadoo_turn(gw: GatewayProcess, token: str) -> dict[str, Any]:
    """The turn's last frame; a socket closed instead: {"closed": its code, "reason"}."""
    try:
        async with websockets.connect(socket_url(gw, token)) as ws:
            await ask(ws, "fake-model")
            while True:
                frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                if frame["type"] in ("response_end", "error"):
                    return frame
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None
        return {"closed": exc.rcvd.code, "reason": exc.rcvd.reason}


async def test_a_database_restart_fails_requests_cleanly_then_recovers(
    gw: GatewayProcess, database: PostgresServer
) -> None:
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


async def test_a_reply_that_ends_while_the_database_is_away_is_stored_once_it_is_back(
    gw: GatewayProcess, database: PostgresServer
) -> None:
    # The reply runs on (the model server is not the database); its end is written
    # once the database is back, and only then sent: no client sees an end the store
    # does not have, and a reload or a late resume finds the whole text.
    token = make_token(f"outage-end-{uuid.uuid4().hex[:6]}")
    url = socket_url(gw, token)
    expected = "".join(deltas_of("fake-slow", ""))
    text, back_at, end_at = "", 0.0, 0.0
    async with websockets.connect(url) as ws:
        await ask(ws, "fake-slow")
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            if frame["type"] == "response_start":  # its turn is written: now the outage
                chat_id, message_id = frame["chat_id"], frame["message_id"]
                await asyncio.to_thread(database.stop)
            elif frame["type"] == "text-delta":
                text += frame["text"]
                if text == expected:  # the model server is done: the end waits for the store
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(database.start)
                    back_at = time.monotonic()
            else:
                assert frame["type"] == "response_end", frame
                end_at = time.monotonic()
                break
    assert frame["full_response"] == expected.strip() and back_at and end_at > back_at
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/chats/{chat_id}", headers=headers) as resp:
            assert resp.status == 200
            stored = (await resp.json())["chat"]["history"]["messages"][message_id]
    assert (stored["content"], stored["done"]) == (expected.strip(), True), stored
    assert "error" not in stored
    log = gw.log()
    assert "storing a reply's end: the database is unavailable; trying again" in log
    assert "a reply's end stored once the database was back" in log
    assert "Traceback" not in log, log[-3000:]


async def test_a_replica_stopping_while_a_reply_end_waits_for_the_database_exits_in_time(
    gw: GatewayProcess, database: PostgresServer
) -> None:
    # The end's write is retried for a minute, but not past the replica's grace: the
    # orchestrator's kill would come first, and nothing would be sent at all.
    token = make_token(f"outage-stop-{uuid.uuid4().hex[:6]}")
    url = socket_url(gw, token)
    expected = "".join(deltas_of("fake-slow", ""))
    text, frame = "", {}
    async with websockets.connect(url) as ws:
        await ask(ws, "fake-slow")
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            if frame["type"] == "response_start":
                await asyncio.to_thread(database.stop)
            elif frame["type"] == "text-delta":
                text += frame["text"]
                if text == expected:
                    break
        await asyncio.sleep(0.5)  # its end's write is being retried now
        assert gw.proc is not None
        stopped_at = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)  # a grace of 1 s (tests/gatewayproc.py)
        with contextlib.suppress(websockets.ConnectionClosed):
            while frame["type"] != "response_end":
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        code = await asyncio.wait_for(asyncio.to_thread(gw.proc.wait), TIMEOUT_S)
    assert time.monotonic() - stopped_at < 10, "the end's retry held the stop up"
    assert code == 0
    # Its end went out once given up on (the row keeps its last checkpoint).
    assert frame["type"] == "response_end", frame
    assert "storing a reply's end failed: the database stayed unavailable" in gw.log()


async def test_a_stop_while_the_database_is_away_is_answered_and_its_end_stored_later(
    gw: GatewayProcess, database: PostgresServer
) -> None:
    # A stop waited for its reply's end, whose write waits for the database (up to a
    # minute): the user's stop hung as long.  It is answered after STOP_WAIT_S (5 s);
    # the end goes out, and is stored, once the database is back.
    token = make_token(f"outage-cancel-{uuid.uuid4().hex[:6]}")
    url = socket_url(gw, token)
    headers = {"Authorization": f"Bearer {token}"}
    text, frame = "", {}
    async with aiohttp.ClientSession() as http, websockets.connect(url) as ws:
        await ask(ws, "fake-crawl")
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            if frame["type"] == "response_start":
                chat_id, message_id = frame["chat_id"], frame["message_id"]
                await asyncio.to_thread(database.stop)
            elif frame["type"] == "text-delta":
                text += frame["text"]
                if len(text.split()) == 3:
                    break
        asked_at = time.monotonic()
        stop_url = f"{gw.url}/api/tasks/chat/{chat_id}/stop"
        async with http.post(stop_url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        answered_s = time.monotonic() - asked_at
        assert 4 < answered_s < 8, answered_s  # STOP_WAIT_S, not the end write's minute
        await asyncio.to_thread(database.start)
        while frame["type"] != "response_end":
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            if frame["type"] == "text-delta":
                text += frame["text"]
        assert frame["full_response"] == text  # what was streamed, kept
        async with http.get(f"{gw.url}/api/v1/chats/{chat_id}", headers=headers) as resp:
            assert resp.status == 200
            stored = (await resp.json())["chat"]["history"]["messages"][message_id]
    assert (stored["content"], stored["done"]) == (text, True), stored
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
