"""What a probe of the socket transports found (2026-12-07), each on the session's real
gateway, each with what the libraries did on their own:

    a long-polling POST whose body is no Engine.IO payload
        was: a traceback logged twice (once past the log format and masking), 200
        now: 400 at once, the session ended, no traceback
    a long-polling POST over GATEWAY_MAX_FRAME_BYTES
        was: nothing for 60 s (Engine.IO's close waits for a poll the client, blocked on
             its POST, never sends), then the body deadline's 408
        now: 413 at once, the session ended
    a close reason past 123 bytes cut inside a character (a path of "é"s)
        was: a reason that is not UTF-8: the client drops the close code
        now: cut between two characters: the client reads 1008
    a request line past aiohttp's 8 KB (a token in a long query)
        was: an ERROR with a traceback per request, the first 100 bytes of the line in it
        now: one line, a bounded number of them, the query's secrets masked
    a Socket.IO event nobody handles, sent with an ack id
        was: no ack: the client's callback waits for ever
        now: an empty ack
    Open WebUI's `heartbeat` and `usage`, and unknown events, sent past the rate
        was: not counted: a client could send them as fast as it liked
        now: counted as every event; past the rate, the ack is the rate error
    a long-polling POST whose body never comes whole (found by the probe of LIMITS.md)
        was: its 408, and a traceback logged at ERROR (Engine.IO's "post request
             handler error"), one per request, no token needed
        now: its 408, the session ended, nothing but the throttled line
    a long-polling POST of a large payload (a question of 900 KB)
        was: read with one `read(length)`, which aiohttp answers with what it has
             buffered: the payload cut short, its event lost
        now: read whole
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from typing import Any

import aiohttp
import websockets

from tests.api.test_nadoo_ws import user, ws_url
from tests.clients import PySocket
from tests.gatewayproc import GatewayProcess

QUICK_S = 5.0  # each of these answers in milliseconds; the old hang was 60 s


async def polling_url(http: aiohttp.ClientSession, base: str) -> str:
    """The URL of an Engine.IO polling session that has connected to Socket.IO."""
    sid = await polling_session(http, base)
    return f"{base}/ws/socket.io/?EIO=4&transport=polling&sid={sid}"


async def polling_session(http: aiohttp.ClientSession, base: str) -> str:
    """An Engine.IO polling session that has connected to Socket.IO: its sid."""
    async with http.get(f"{base}/ws/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 200
        opened = await resp.text()
    sid = json.loads(opened[opened.index("{") :])["sid"]
    url = f"{base}/ws/socket.io/?EIO=4&transport=polling&sid={sid}"
    async with http.post(url, data=b"40") as resp:
        assert resp.status == 200
    async with http.get(url) as resp:
        assert (await resp.text()).startswith("40")
    return sid


async def test_a_polling_post_that_is_no_engineio_payload_is_refused_at_once(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    async with aiohttp.ClientSession() as http:
        for body in (b"zzz", b'42["x\xff"]'):
            url = await polling_url(http, gateway.url)
            began = time.monotonic()
            async with http.post(url, data=body) as resp:
                assert resp.status == 400, await resp.text()
            assert time.monotonic() - began < QUICK_S
            async with http.get(url) as resp:  # the session is over
                assert resp.status == 400
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


async def test_a_polling_post_past_the_frame_limit_is_413_at_once(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        url = await polling_url(http, gateway.url)
        began = time.monotonic()
        body = io.BytesIO(b"4" + b"x" * (1024 * 1024 + 10))
        async with http.post(url, data=body) as resp:
            assert resp.status == 413
            assert "GATEWAY_MAX_FRAME_BYTES" in (await resp.json())["detail"]
        assert time.monotonic() - began < QUICK_S
        async with http.get(url) as resp:  # the session is over
            assert resp.status == 400


async def test_a_long_close_reason_is_cut_between_two_characters(gateway: GatewayProcess) -> None:
    _, token = user()
    execution = "a" + "é" * 80  # a refusal that quotes it runs past 123 bytes
    url = ws_url(gateway, f"/api/v1/ws/plugin/debug/{execution}", token)
    async with websockets.connect(url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), QUICK_S))
        assert frame["type"] == "error"
        await asyncio.wait_for(ws.wait_closed(), QUICK_S)
    assert ws.close_code == 1008  # not None: the reason decoded
    assert ws.close_reason and len(ws.close_reason.encode()) <= 123


async def test_an_overlong_request_line_is_one_masked_line_in_the_log(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    secret = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            url = f"{gateway.url}/ws/chat/s?token={secret}{'x' * 10_000}"
            async with http.get(url) as resp:
                assert resp.status == 400
        async with http.get(f"{gateway.url}/health", headers={"X-Big": "a" * 9000}) as resp:
            assert resp.status == 400
    await asyncio.sleep(0.3)
    logged = gateway.log()[offset:]
    assert "Traceback" not in logged and secret not in logged, logged[-2000:]
    said = [line for line in logged.splitlines() if "bad HTTP request" in line]
    # At most one line every 10 s, with a count (none here if another test's bad
    # request was said in the last 10 s): not one per request.
    assert len(said) <= 3, said


async def test_an_event_nobody_handles_is_acked_and_every_event_counts_against_the_rate(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        call = sock.client.call
        assert await call("no-such-event", {"a": 1}, timeout=QUICK_S) is None  # acked, empty
        assert await call("heartbeat", {}, timeout=QUICK_S) is None
        # GATEWAY_MAX_MESSAGES_PER_S (20, bursts of 40): a flood of heartbeats and unknown
        # events is refused like one of any other event.
        acks = await asyncio.gather(
            *(call("heartbeat" if i % 2 else "nope", {}, timeout=QUICK_S) for i in range(120))
        )
        refused = [ack for ack in acks if isinstance(ack, dict) and "error" in ack]
        assert len(refused) >= 60, acks
        assert refused[0]["error"]["code"] == "rate_limited"
    finally:
        await sock.close()


async def test_an_event_named_like_the_catch_all_is_dropped_with_an_empty_ack(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        for args in ({}, "x"):
            assert await sock.client.call("*", args, timeout=QUICK_S) is None  # acked
        assert await sock.client.call("heartbeat", {}, timeout=QUICK_S) is None  # still served
    finally:
        await sock.close()
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


async def test_a_large_polling_post_is_read_whole(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        url = await polling_url(http, gateway.url)
        big = json.dumps(["heartbeat", {"note": "é" * 200_000}], ensure_ascii=False)
        body = ("421" + big).encode()  # about 400 KB, sent in two pieces: as TCP may
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(
                f"POST {url.removeprefix(gateway.url)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Connection: close\r\nContent-Type: text/plain;charset=UTF-8\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2 + 1]  # (inside an "é")
            )
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(body[len(body) // 2 + 1 :])
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), QUICK_S)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        async with http.get(url) as resp:
            assert "431" in await resp.text()  # the event's ack: it arrived whole


async def test_a_client_of_another_engineio_version_is_refused_without_an_error_line(
    start_gateway: Any,
) -> None:
    """Engine.IO logs the first of a process as an ERROR (the next ones at INFO): a
    client's fault is said at INFO, so an alert on ERROR lines is not set off."""
    gateway = start_gateway()
    offset = len(gateway.log())
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{gateway.url}/ws/socket.io/?EIO=3&transport=polling") as resp:
                assert resp.status == 400
    await asyncio.sleep(0.3)
    logged = gateway.log()[offset:]
    assert gateway.troubles_since(offset) == [], logged[-2000:]
    assert "unsupported version" in logged


async def test_a_polling_post_whose_body_never_comes_whole_logs_no_traceback(
    start_gateway: Any,
) -> None:
    gw: GatewayProcess = start_gateway({"GATEWAY_REQUEST_BODY_TIMEOUT_S": "1"})
    async with aiohttp.ClientSession() as http:
        sid = await polling_session(http, gw.url)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            f"POST /ws/socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{gw.port}\r\nContent-Type: text/plain\r\n"
            "Content-Length: 2\r\n\r\n4".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), QUICK_S)  # until it is closed
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        async with http.get(f"{gw.url}/ws/socket.io/?EIO=4&transport=polling&sid={sid}") as resp:
            assert resp.status == 400  # the session was ended
    await asyncio.sleep(0.2)
    log = gw.log()
    assert "request body not in after 1 s" in log
    assert "Traceback" not in log and "post request handler error" not in log, log[-3000:]
