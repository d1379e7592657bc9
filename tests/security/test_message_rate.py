"""GATEWAY_MAX_MESSAGES_PER_S: a connection that floods frames or events has the
excess dropped, is told once a second in its own protocol, and stays usable."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets

from gateway.edge.throttle import MessageRate
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
