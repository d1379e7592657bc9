"""What a probe of the Socket.IO transport's edges found (2026-12-08), each on a real
gateway with raw clients, none needing a token, each with what the code did before:

    a client that provokes answers (a CONNECT to another namespace, refused; an
    event of no handler, acked) and reads none of them
        was: every answer queued for as long as the client sent a pong now and
             then (a probe's 1 MB namespaces, echoed back: 850 MB on one socket)
        now: past MAX_HELD_PACKETS (or MAX_HELD_ANSWER_CHARS) unread, the session ends;
             a namespace past MAX_NAMESPACE_CHARS is dropped, never echoed
    a Socket.IO event of 1 MiB (a list of 330,000 empty lists)
        was: decoded on the loop before any rate (100 ms each, 600 ms from four
             sockets at once)
        now: past MAX_PACKET_CHARS, not decoded: an event that asked for an ack
             is told so in it, anything else dropped
    a polling POST whose session is ended while its body is read (a second POST
    past the bound)
        was: 500 and an ERROR traceback (python-engineio's UnboundLocalError)
        now: 400, as any POST to an ended session
    an upgrade websocket that never sends its probe
        was: kept open for ever, a connection of the address's 64 and the process's
        now: closed after the ping timeout
    a binary event with an ack id, refused (too many attachments announced, or
    its attachments never sent)
        was: no ack: the client's callback waited for ever
        now: an empty ack, as for any event refused
    a flood of Engine.IO packets on its websocket (UPGRADE, each answered)
        was: every one answered, 47.8 s of CPU in 42 s from one socket
        now: every frame counts; far past the rate the session ends
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import aiohttp
import pytest
import websockets

from gateway.transports.socketio import PING_TIMEOUT_S
from gateway.transports.socketio_engine import MAX_HELD_PACKETS
from gateway.transports.socketio_guard import MAX_NAMESPACE_CHARS, MAX_PACKET_CHARS
from tests.clients import PySocket
from tests.gatewayproc import GatewayProcess, make_token
from tests.transports.test_probed_edges import polling_session

PACKETS_A_POST = 16  # Engine.IO's payload bound (`Payload.max_decode_packets`)


def _polling(gateway: GatewayProcess, sid: str) -> str:
    return f"{gateway.url}/ws/socket.io/?EIO=4&transport=polling&sid={sid}"


async def test_a_client_that_reads_no_answer_it_provokes_is_ended(start_gateway: Any) -> None:
    gateway: GatewayProcess = start_gateway()  # (its log line: one every 10 s at most)
    offset = len(gateway.log())
    async with aiohttp.ClientSession() as http:
        sid = await polling_session(http, gateway.url)
        url = _polling(gateway, sid)
        # A namespace past the bound: dropped, no answer (the poll below gets the
        # next one's first).
        long_one = "40/" + "n" * (MAX_NAMESPACE_CHARS + 1) + ","
        async with http.post(url, data=long_one + "\x1e40/x,") as resp:
            assert resp.status == 200
        async with http.get(url) as resp:
            assert (await resp.text()).startswith("44/x,")  # CONNECT_ERROR, /x only
        posts = 0
        status = 200
        while status == 200:  # never polled again: every answer stays queued
            async with http.post(url, data="\x1e".join(["40/x,"] * PACKETS_A_POST)) as resp:
                status = resp.status
            posts += 1
            assert posts * PACKETS_A_POST <= MAX_HELD_PACKETS + 2 * PACKETS_A_POST
        assert status == 400
        assert posts * PACKETS_A_POST > MAX_HELD_PACKETS
        async with http.get(url) as resp:
            assert resp.status == 400  # the session is over
    await asyncio.sleep(0.2)
    assert (
        f"engine.io session ended: its client left {MAX_HELD_PACKETS} packets unread"
        in gateway.log()
    )
    assert gateway.troubles_since(offset) == []


async def test_an_event_past_the_packet_bound_is_acked_as_refused_not_read(
    gateway: GatewayProcess,
) -> None:
    sock = await PySocket().connect(gateway.url, make_token("probed-big-event"))
    try:
        signal: dict[str, Any] = {"chat_id": "nope", "data": {"type": "leave"}}
        big = {**signal, "pad": [[]] * (MAX_PACKET_CHARS // 3)}
        refused = await sock.client.call("events:chat", big, timeout=5)
        assert refused["error"]["code"] == "too_large", refused
        assert str(MAX_PACKET_CHARS) in refused["error"]["message"]
        assert await sock.client.call("events:chat", signal, timeout=5) is True  # goes on
    finally:
        await sock.close()


async def test_a_post_whose_session_ends_while_it_is_read_is_400_not_500(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    async with aiohttp.ClientSession() as http:
        sid = await polling_session(http, gateway.url)
        path = f"/ws/socket.io/?EIO=4&transport=polling&sid={sid}"
        head = f"Host: 127.0.0.1:{gateway.port}\r\nContent-Type: text/plain\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"POST {path} HTTP/1.1\r\n{head}Content-Length: 6\r\n\r\nzz".encode())
        await writer.drain()
        await asyncio.sleep(0.3)  # the POST is reading its body
        # A second POST past the bound ends the session at once (413).
        async with http.post(
            _polling(gateway, sid), data=io.BytesIO(b"4" + b"x" * (1 << 20))
        ) as resp:
            assert resp.status == 413
        writer.write(b"zzzz")  # the first one's body, which is no payload either
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


@pytest.mark.timeout(PING_TIMEOUT_S + 30)
async def test_an_upgrade_that_never_sends_its_probe_is_closed(gateway: GatewayProcess) -> None:
    """Within the ping timeout of its opening, whatever it sends meanwhile (a ping
    every 5 s, each answered, does not keep it)."""
    async with aiohttp.ClientSession() as http:
        sid = await polling_session(http, gateway.url)
    base = gateway.url.replace("http", "ws", 1)
    url = f"{base}/ws/socket.io/?EIO=4&transport=websocket&sid={sid}"
    async with websockets.connect(url, ping_interval=None) as ws:
        opened = asyncio.get_running_loop().time()

        async def pinging() -> None:
            while True:
                await asyncio.sleep(5)
                await asyncio.wait_for(await ws.ping(), 5)  # answered

        pings = asyncio.create_task(pinging())
        try:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), PING_TIMEOUT_S + 10)
        finally:
            pings.cancel()
        assert asyncio.get_running_loop().time() - opened < PING_TIMEOUT_S + 5


async def test_a_flood_of_engineio_packets_ends_the_session(start_gateway: Any) -> None:
    gateway: GatewayProcess = start_gateway({"GATEWAY_MAX_MESSAGES_PER_S": "5"})
    url = gateway.url.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        assert str(await ws.recv()).startswith("0{")
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(2000):
                await ws.send("5")  # UPGRADE: each answered with a NOOP
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
    assert "engine.io websocket closed: flooding frames" in gateway.log()


async def test_a_refused_binary_event_that_asked_for_an_ack_gets_one(
    gateway: GatewayProcess,
) -> None:
    url = gateway.url.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"
    placeholder = '{"_placeholder":true,"num":0}'
    async with websockets.connect(url) as ws:
        assert str(await ws.recv()).startswith("0{")
        await ws.send("40")
        assert str(await ws.recv()).startswith("40")
        # More attachments announced than any event carries: refused at once.
        await ws.send(f'4517-1["x",{placeholder}]')
        assert await asyncio.wait_for(ws.recv(), 5) == "431[]"
        # Its attachments never come: a text packet next.
        await ws.send(f'451-2["x",{placeholder}]')
        await ws.send('423["heartbeat"]')
        assert await asyncio.wait_for(ws.recv(), 5) == "432[]"
        assert await asyncio.wait_for(ws.recv(), 5) == "433[]"  # the next event, as itself
