"""A replica stopping (SIGTERM) stops being ready at once, lets its running replies
finish within GATEWAY_SHUTDOWN_GRACE_S, then exits; a reply longer than the grace
is stopped and stored with what it had, and its client is told it ended."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from typing import Any

import aiohttp
import pytest
import socketio
import websockets

from tests.api.test_nadoo_ws import recv, user, ws_url
from tests.clients import JSSocket
from tests.fakes.upstream import FakeUpstream, deltas_of
from tests.gatewayproc import GatewayProcess

TIMEOUT_S = 20


async def started(gw: GatewayProcess, token: str, model: str) -> tuple[Any, str]:
    ws = await websockets.connect(ws_url(gw, f"/ws/chat/stop-{uuid.uuid4().hex[:6]}", token))
    assert (await recv(ws))["type"] == "connected"
    await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": model}))
    start = await recv(ws)
    assert start["type"] == "response_start", start
    return ws, start["chat_id"]


async def until_end(ws: Any) -> tuple[str, dict[str, Any]]:
    text = ""
    while (frame := await recv(ws, TIMEOUT_S))["type"] != "response_end":
        if frame["type"] == "text-delta":
            text += frame["text"]
    return text, frame


async def exited(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    code = await asyncio.wait_for(asyncio.to_thread(gw.proc.wait), TIMEOUT_S)
    return int(code)


async def test_running_replies_finish_while_the_replica_is_not_ready(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_SHUTDOWN_GRACE_S": "30"}
    )
    _, token = user()
    ws, _ = await started(gw, token, "fake-slow")
    assert gw.proc is not None
    stopped_at = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # at once (the signal is handled within a tick)
            async with http.get(f"{gw.url}/ready?upstreams=0") as resp:
                answer = await resp.json()
            if resp.status == 503:
                break
            await asyncio.sleep(0.02)
    assert resp.status == 503 and answer["checks"] == {"replica": "failed"}, answer
    text, end = await until_end(ws)
    await ws.close()
    # Whole: the replica did not stop it.
    expected = "".join(deltas_of("fake-slow", "go"))
    assert text == expected and end["full_response"] == expected.strip(), end
    assert not end.get("cancelled"), end
    assert await exited(gw) == 0
    # Not the grace period: it stopped once the reply had ended.
    assert time.monotonic() - stopped_at < 15
    assert "stopping: waiting for running replies" in gw.log()


async def test_a_reply_longer_than_the_grace_is_stopped_and_kept(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_SHUTDOWN_GRACE_S": "0.5"}
    )
    _, token = user()
    ws, chat_id = await started(gw, token, "fake-crawl")  # 15 s of deltas
    first = await recv(ws)  # it streams
    assert first["type"] == "text-delta", first
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    rest, end = await until_end(ws)
    text = first["text"] + rest
    assert end.get("cancelled") is True and end["full_response"] == text, end
    # Then the socket is closed "going away": its client reconnects elsewhere.
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await exited(gw) == 0
    assert "replies still running after the grace period are stopped" in gw.log()
    # What streamed is stored: the next start finds it.
    gw.start()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{gw.url}/api/v1/chats/{chat_id}", headers=headers) as resp:
            chat = await resp.json()
    stored = [m for m in chat["chat"]["history"]["messages"].values() if m["role"] == "assistant"]
    assert [m["content"] for m in stored] == [text], stored


@pytest.mark.parametrize(
    ("model", "stream"),
    [("fake-crawl", True), ("fake-crawl", False), ("fake-loading", True)],
)
async def test_a_pure_api_reply_longer_than_the_grace_ends_in_its_protocol(
    start_gateway: Any, fake_upstream: FakeUpstream, model: str, stream: bool
) -> None:
    """Nothing stores a pure-API reply, and it is its request's: past the grace its
    client is told the gateway is stopping (an error event and `[DONE]` once it
    streams; a 503 for a JSON answer, or while the model server has not answered),
    not cut, and the replica exits at once (it waited for aiohttp's own shutdown)."""
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_SHUTDOWN_GRACE_S": "0.5"}
    )
    _, token = user()
    body = {"model": model, "messages": [{"role": "user", "content": "go"}]}
    streams = stream and model == "fake-crawl"  # (fake-loading never answers)
    headers = {"Authorization": f"Bearer {token}"}
    assert gw.proc is not None
    async with aiohttp.ClientSession() as http:

        async def ask() -> tuple[int, bytes]:
            url = f"{gw.url}/v1/chat/completions"
            async with http.post(url, json={**body, "stream": stream}, headers=headers) as resp:
                if streams:
                    first = await asyncio.wait_for(resp.content.readline(), TIMEOUT_S)
                    assert first.startswith(b"data: {"), first
                    asking.set()
                return resp.status, await asyncio.wait_for(resp.read(), TIMEOUT_S)

        asking = asyncio.Event()
        asked = asyncio.create_task(ask())
        if streams:
            await asyncio.wait_for(asking.wait(), TIMEOUT_S)
        else:
            await asyncio.sleep(0.5)  # (its answer comes whole, at the end, or never)
        stopped_at = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        status, answer = await asked
    if streams:
        lines = [line for line in answer.decode().splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "unavailable" and "stopping" in error["message"], error
    else:
        assert status == 503, answer
        error = json.loads(answer)["error"]
        assert error["code"] == "unavailable" and "stopping" in error["message"], error
    assert await exited(gw) == 0
    assert time.monotonic() - stopped_at < 8  # the grace, then at once: not ~10 s more


async def test_an_event_stream_ends_whole_and_does_not_hold_the_stop(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    """An idle `/api/v1/events` stream (a web-app tab may hold one): its body ends
    whole at the stop (EventSource reconnects, through the balancer, elsewhere), and
    the process exits without aiohttp's own wait for it (5 s, twice; with the default
    grace, past Compose's 40 s before SIGKILL)."""
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_SHUTDOWN_GRACE_S": "2"}
    )
    _, token = user()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/events", headers=headers) as stream:
            assert stream.status == 200
            assert gw.proc is not None
            stopped_at = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(stream.read(), TIMEOUT_S) == b""
    assert await exited(gw) == 0
    assert time.monotonic() - stopped_at < 4


async def test_socketio_clients_are_let_go_at_once_to_reconnect_elsewhere(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    """Idle web-app tabs on a stopping replica: each session closed at the Engine.IO
    level (socket.io-client then reconnects, through the balancer, to a replica that
    is not stopping; a Socket.IO DISCONNECT would keep it away for good), and the
    process exits without waiting for their pings to time out."""
    gw: GatewayProcess = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url})
    _, token = user()
    tabs = [
        await JSSocket().start(gw.url, token, transports=transports, timeout_ms=30_000)
        for transports in ("websocket", "polling", "polling,websocket")
    ]
    try:
        assert gw.proc is not None
        stopped_at = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        for tab in tabs:
            gone = await tab.wait_for("disconnected", timeout_s=10)
            # Not "io server disconnect": the client reconnects on its own.
            assert gone["reason"] in ("transport close", "transport error"), gone
        assert await exited(gw) == 0
        assert time.monotonic() - stopped_at < 5, "no wait for a ping timeout"
    finally:
        for tab in tabs:
            await tab.close()


async def test_python_socketio_clients_reconnect_once_the_replica_is_back(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    """python-socketio's client, as a script or a bot runs it: on an Engine.IO CLOSE
    packet it takes the server for done with it and never reconnects; a stopping
    replica now ends its sessions as a lost connection, which it reconnects after
    (here, to the same replica restarted: through a balancer, to another)."""
    gw: GatewayProcess = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url})
    _, token = user()
    sessions, clients, reasons = [], [], []
    for transports in (["websocket"], ["polling"]):
        http = aiohttp.ClientSession()
        client = socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.2,
            reconnection_delay_max=0.5,
            randomization_factor=0,
            http_session=http,
        )

        async def gone(*why: Any, seen: list[Any] = reasons) -> None:
            seen.append(why)

        client.on("disconnect", gone)
        await client.connect(
            gw.url, socketio_path="/ws/socket.io", auth={"token": token}, transports=transports
        )
        sessions.append(http)
        clients.append(client)
    try:
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        assert await exited(gw) == 0
        assert len(reasons) == 2 and not any(client.connected for client in clients), reasons
        assert all("server disconnect" not in str(why) for why in reasons), reasons
        await asyncio.to_thread(gw.start)
        deadline = time.monotonic() + TIMEOUT_S
        while not all(client.connected for client in clients):
            assert time.monotonic() < deadline, [client.connected for client in clients]
            await asyncio.sleep(0.1)
    finally:
        for client in clients:
            await client.disconnect()
        for http in sessions:
            await http.close()
