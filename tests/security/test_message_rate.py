"""GATEWAY_MAX_MESSAGES_PER_S: a connection that floods frames or events has the
excess dropped, is told once a second in its own protocol, and stays usable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
import websockets

from gateway.edge.throttle import FLOOD_BURSTS, MessageRate
from tests.api.test_nadoo_ws import recv, user, ws_url
from tests.clients import PySocket
from tests.gatewayproc import GatewayProcess, make_token

RATE = 5


def test_the_bucket_allows_bursts_of_twice_the_rate_then_the_rate() -> None:
    now = [0.0]
    rate = MessageRate(RATE, clock=lambda: now[0])
    assert sum(rate.allow() for _ in range(100)) == 2 * RATE
    now[0] += 1.0
    assert sum(rate.allow() for _ in range(100)) == RATE
    assert rate.tell() and not rate.tell()  # told at most once a second
    now[0] += 1.0
    assert rate.tell()
    assert all(MessageRate(None).allow() for _ in range(1000))


def test_a_connection_far_past_its_rate_within_a_second_is_flooding() -> None:
    now = [0.0]
    rate = MessageRate(RATE, clock=lambda: now[0])
    flood = FLOOD_BURSTS * 2 * RATE  # refusals a second before the cut
    for _ in range(2 * RATE + flood):
        rate.allow()
    assert not rate.flooding()  # as many refused as a flood may be, not more
    now[0] += 0.1  # (half a message refilled)
    assert not rate.allow() and rate.flooding()
    now[0] += 1.0  # a new second: refusals are counted afresh
    assert sum(rate.allow() for _ in range(flood)) == RATE  # (5.5 refilled)
    assert not rate.flooding()
    assert "closed" in rate.flood_error().message
    unlimited = MessageRate(None)
    assert all(unlimited.allow() for _ in range(100_000)) and not unlimited.flooding()


@pytest.fixture
def throttled(start_gateway: Any) -> GatewayProcess:
    gateway: GatewayProcess = start_gateway({"GATEWAY_MAX_MESSAGES_PER_S": str(RATE)})
    return gateway


async def test_a_flooding_websocket_gets_one_error_and_stays_usable(
    throttled: GatewayProcess,
) -> None:
    _, token = user()
    session = f"/ws/chat/flood-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(ws_url(throttled, session, token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        for _ in range(50):
            await ws.send(json.dumps({"type": "ping"}))
        frames = []
        with pytest.raises(TimeoutError):
            while True:
                frames.append(await recv(ws, timeout_s=1.0))
        kinds = [frame["type"] for frame in frames]
        assert kinds.count("pong") == 2 * RATE, kinds
        errors = [frame for frame in frames if frame["type"] == "error"]
        assert len(errors) == 1 and errors[0]["code"] == "rate_limited", errors
        await asyncio.sleep(1.0)  # the bucket refills
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_a_websocket_flooding_pings_is_cut_off_and_others_are_not(
    throttled: GatewayProcess,
) -> None:
    """Pings count: 2,000 in one go cost the loop their reading, answered or not;
    far past the rate, the flavour's refusal and close 1008 (or, when the cut
    finds the flood still unread in its buffer, the kernel's reset), and a line
    in the log. Another socket goes on."""
    _, token = user()
    async with websockets.connect(ws_url(throttled, "/ws/chat/calm", token)) as calm:
        assert (await recv(calm))["type"] == "connected"
        async with websockets.connect(ws_url(throttled, "/ws/chat/flood", token)) as ws:
            assert (await recv(ws))["type"] == "connected"
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(2000):
                    await ws.ping()
            frames = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    frames.append(await recv(ws, timeout_s=10))
            assert all(
                f["type"] == "error" and "Too many messages" in f["message"] for f in frames
            ), frames
            if ws.close_code != 1006:  # (1006: the reset, no close frame)
                assert ws.close_code == 1008 and "Too many" in ws.close_reason, ws.close_code
        assert "websocket closed: flooding frames" in throttled.log()
        await calm.send(json.dumps({"type": "ping"}))
        assert (await recv(calm))["type"] == "pong"


async def test_a_flooding_socketio_client_gets_its_events_acked_as_refused(
    throttled: GatewayProcess,
) -> None:
    sock = await PySocket().connect(throttled.url, make_token(f"flood-{uuid.uuid4().hex[:6]}"))
    try:
        signal = {"chat_id": "nope", "data": {"type": "leave"}}
        acks = [
            await sock.client.call("events:chat", signal, timeout=5) for _ in range(6 * RATE)
        ]
        assert acks[: 2 * RATE] == [True] * (2 * RATE), acks
        refused = [ack for ack in acks[2 * RATE :] if ack is not True]
        assert refused and all(ack["error"]["code"] == "rate_limited" for ack in refused), acks
    finally:
        await sock.close()


async def test_a_socketio_websocket_flooding_pings_is_ended(throttled: GatewayProcess) -> None:
    """No Engine.IO client sends WebSocket pings (its pings are packets); one is
    answered within the rate, and a flood ends the session as a broken transport,
    no token needed to send it. A Socket.IO client beside it goes on."""
    sock = await PySocket().connect(throttled.url, make_token(f"calm-{uuid.uuid4().hex[:6]}"))
    try:
        url = throttled.url.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(url) as ws:
            assert str(await ws.recv()).startswith("0{")  # Engine.IO's OPEN
            await asyncio.wait_for(await ws.ping(), 5)  # answered
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(2000):
                    await ws.ping()
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert "engine.io websocket closed: flooding frames" in throttled.log()
        signal = {"chat_id": "nope", "data": {"type": "leave"}}
        assert await sock.client.call("events:chat", signal, timeout=5) is True
    finally:
        await sock.close()
