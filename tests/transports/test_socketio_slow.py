"""A Socket.IO client that stops reading costs bounded memory and slows no one else.

Two stuck consumers of the same user, the kinds seen in the field: a polling
client that stops polling (a frozen tab) and a websocket whose peer stops
reading (its TCP window closes).  Megabytes of replies are published to
their user while another user's reply streams; the test measures the
gateway's RSS and that other reply's timing, against a baseline phase in the
same run with the same load and no stuck consumer.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.clients import PySocket, get_json, post_json, turn_body
from tests.fakes.upstream import FLOOD_DELTA_CHARS, FLOOD_DELTAS, FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

# Enough that what a stuck consumer could hold (its outbox and 16 Engine.IO packets)
# is a small part of what is published to it, whatever the allocator does meanwhile.
FLOODS_PER_PHASE = 10
MB = 1024 * 1024


async def polling_consumer(url: str, token: str) -> str:
    """Connect over Engine.IO polling as `token`, read the connect ack, then never poll again."""
    base = f"{url}/ws/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as resp:
            opened = json.loads((await resp.text())[1:])
        sid = opened["sid"]
        packet = "40" + json.dumps({"token": token})
        async with session.post(f"{base}&sid={sid}", data=packet) as resp:
            assert (await resp.text()).lower() == "ok"
        async with session.get(f"{base}&sid={sid}") as resp:
            assert (await resp.text()).startswith("40")
    return str(sid)


def websocket_consumer(port: int, token: str) -> socket.socket:
    """A raw websocket with a tiny receive window that stops reading after the connect ack."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 101"), received
    sock.sendall(_masked_text_frame("40" + json.dumps({"token": token})))
    while b'40{"sid"' not in received:  # Engine.IO open, then the Socket.IO connect ack
        received += sock.recv(4096)
    return sock


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 65536
    # RFC 6455 §5.2: FIN + text opcode; MASK bit + 16-bit extended length.
    return bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked


async def flood(gateway: GatewayProcess, token: str) -> str:
    """A 5 MB reply for the stuck user (frontend mode, no socket needed to start it)."""
    body = turn_body("no-socket", "flood", model="fake-flood")
    answer = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    return str(answer["chat_id"])


async def until_idle(gateway: GatewayProcess, token: str, chat_ids: list[str]) -> None:
    """Until the floods' replies ended (asked the way the web app asks, over REST)."""
    for chat_id in chat_ids:
        for _ in range(600):
            tasks = await get_json(f"{gateway.url}/api/tasks/chat/{chat_id}", token)
            if not tasks["task_ids"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the reply of chat {chat_id} did not end")


async def phase(gateway: GatewayProcess, slow_token: str, fast_token: str) -> dict[str, float]:
    """Floods for the stuck user and, at the same time, one normal reply for another user."""
    fast = await PySocket().connect(gateway.url, fast_token)
    try:
        started = time.monotonic()
        floods = [await flood(gateway, slow_token) for _ in range(FLOODS_PER_PHASE)]
        body = turn_body(fast.sid, "are you there", model="fake-slow")
        await post_json(f"{gateway.url}/api/chat/completions", fast_token, body)
        events = await fast.wait_ended(timeout_s=60)
        await until_idle(gateway, slow_token, floods)
        elapsed = time.monotonic() - started
    finally:
        await fast.close()
    times = [e["t"] for e in events]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {"reply_s": times[-1] - times[0], "max_gap_s": max(gaps), "phase_s": elapsed}


async def test_a_stuck_consumer_is_bounded_and_slows_no_one(
    start_gateway: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    gw: GatewayProcess = start_gateway(
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            # glibc keeps freed heap in its arenas, so RSS can jump by tens of MB in a
            # phase whatever the gateway holds; big blocks from mmap (and trimmed)
            # make RSS follow what is alive, which is what this test measures.
            "MALLOC_MMAP_THRESHOLD_": "65536",
            "MALLOC_TRIM_THRESHOLD_": "131072",
            # A consumer that takes nothing for this long while a reply waits for
            # room is stuck: dropped (20 s by default).
            "GATEWAY_STALLED_CLIENT_S": "1",
        }
    )
    assert gw.proc is not None
    process = psutil.Process(gw.proc.pid)
    slow_token = make_token("stuck-user")
    fast_token = make_token("fast-user")
    await phase(gw, slow_token, fast_token)  # warm-up: the allocator's high-water mark

    rss_before_baseline = process.memory_info().rss
    baseline = await phase(gw, slow_token, fast_token)
    rss_after_baseline = process.memory_info().rss

    polling_sid = await polling_consumer(gw.url, slow_token)
    stuck_ws = await asyncio.to_thread(websocket_consumer, gw.port, slow_token)
    try:
        rss_before_stuck = process.memory_info().rss
        stuck = await phase(gw, slow_token, fast_token)
        rss_after_stuck = process.memory_info().rss
        # Both were dropped once stuck for GATEWAY_STALLED_CLIENT_S, not kept waiting
        # with their backlog (the replies went on being fed to them until then).
        for _ in range(100):
            if gw.log().count("slow socket dropped") >= 2:
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            poll = f"{gw.url}/ws/socket.io/?EIO=4&transport=polling&sid={polling_sid}"
            async with session.get(poll) as resp:
                assert resp.status == 400  # the session is gone: the client reconnects
        assert gw.log().count("slow socket dropped") == 2
    finally:
        stuck_ws.close()

    sent_to_stuck = FLOODS_PER_PHASE * FLOOD_DELTAS * FLOOD_DELTA_CHARS
    figures = {
        "sent_to_stuck_user_mb": sent_to_stuck / MB,
        "rss_growth_baseline_mb": (rss_after_baseline - rss_before_baseline) / MB,
        "rss_growth_stuck_mb": (rss_after_stuck - rss_before_stuck) / MB,
        "baseline": baseline,
        "stuck": stuck,
    }
    print("slow-consumer figures:", json.dumps(figures, indent=1))
    # Memory: what reached the stuck consumers is bounded by their outboxes
    # (GATEWAY_OUTBOX_MAX_CHARS, 1 Mi chars each) and Engine.IO's queue
    # (16 packets), not by the 48 MB published to them.  Read against the
    # baseline phase (the same floods, stored the same way): the allocator
    # alone has been seen to grow RSS by 8 MB in a phase on this machine.
    growth = figures["rss_growth_stuck_mb"] - max(0.0, figures["rss_growth_baseline_mb"])
    assert growth < 0.5 * figures["sent_to_stuck_user_mb"], figures
    # The other user's reply: its pace is the model's (64 deltas, 20 ms apart),
    # with or without stuck consumers beside it.
    assert stuck["reply_s"] < baseline["reply_s"] * 1.5 + 0.5, figures
    assert stuck["max_gap_s"] < max(0.5, baseline["max_gap_s"] * 3), figures
