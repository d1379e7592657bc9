"""A raw WebSocket client (Nadoo, RAGFlow) that reads slower than the model writes
gets the whole reply, at its own pace, and is not dropped.

The fake model's flood writes 5,000,000 characters in about a quarter of a
second; the client reads a frame, then waits a millisecond, through a socket
with a small receive buffer, so the gateway's writer waits on it and the
connection's outbox (its text bound lowered to 64 Ki characters here, 1 Mi by
default) overflows within the first few frames.  The reply must then go on
from the replay buffer as the client reads (`Connection.pace`), in the
flavour's own frames: Nadoo's `text-delta`s with their `index` going on, and
RAGFlow's `answer`s, where the cumulative mode's every answer is the whole text
so far (a paced reply must not restart or skip it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from typing import Any

import websockets

from tests.clients import metric_total, post_json
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

WHOLE = reply_text("fake-flood", [])
OUTBOX_CHARS = 65536


def slow_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def slowly(ws: Any) -> dict[str, Any]:
    """The next frame, after a millisecond's pause: a client slower than the model."""
    await asyncio.sleep(0.001)
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return frame


def start(fake_upstream: FakeUpstream, start_gateway: Any) -> GatewayProcess:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_OUTBOX_MAX_CHARS": str(OUTBOX_CHARS)}
    )
    return gw


async def test_a_slow_nadoo_reader_gets_a_5_mb_reply_whole(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw = start(fake_upstream, start_gateway)
    token = make_token(f"nadoo-slow-{uuid.uuid4().hex[:6]}")
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/slow-{uuid.uuid4().hex[:6]}?token={token}"
    before = await metric_total(gw.url, "gateway_paced_replies_total")
    started = time.monotonic()
    async with websockets.connect(url, sock=slow_socket(gw.port), max_size=None) as ws:
        assert (await slowly(ws))["type"] == "connected"
        await ws.send(
            json.dumps({"type": "chat", "content": "flood", "application_id": "fake-flood"})
        )
        text, indexes = "", []
        while (frame := await slowly(ws))["type"] != "response_end":
            assert frame["type"] != "error", frame
            if frame["type"] == "text-delta":
                text += frame["text"]
                indexes.append(frame["index"])
    took = time.monotonic() - started
    paced = await metric_total(gw.url, "gateway_paced_replies_total") - before
    print(
        f"\n5,000,000 characters to a slow Nadoo reader in {took:.2f} s, "
        f"{len(indexes)} text-deltas; replies paced from the buffer: {paced:.0f}"
    )
    assert len(text) == len(WHOLE) and text == WHOLE
    assert indexes == list(range(len(indexes))), "index goes on, no gap, no repeat"
    assert frame["full_response"] == WHOLE
    assert paced >= 1, "the client was slower than the model: the reply must be paced"
    assert "slow websocket dropped" not in gw.log()


async def test_a_slow_ragflow_reader_gets_the_whole_answer_in_both_modes(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    """Delta answers: the 5 MB flood whole.  Cumulative answers (each the whole text so
    far, so the bytes grow with the square of the length): the flood's first 100
    deltas, 500,000 characters, still eight times the outbox's bound."""
    gw = start(fake_upstream, start_gateway)
    jwt_token = make_token(f"rag-slow-{uuid.uuid4().hex[:6]}")
    made = await post_json(f"{gw.url}/ragflow/v1/system/new_token", jwt_token, None)
    key = made["data"]["token"]
    url = f"ws://127.0.0.1:{gw.port}/ragflow/v1/ws/chat?token={key}"
    for mode, deltas in (("delta", 1000), ("cumulative", 100)):
        # RAGFlow's assistants ask for 512 tokens by default: the flood's deltas.
        llm = {"model_name": "fake-flood", "max_tokens": deltas}
        body = {"name": f"flood bot {mode}", "llm": llm}
        made = await post_json(f"{gw.url}/ragflow/api/v1/chats", key, body)
        whole = WHOLE[: deltas * len(WHOLE) // 1000]
        before = await metric_total(gw.url, "gateway_paced_replies_total")
        async with websockets.connect(url, sock=slow_socket(gw.port), max_size=None) as ws:
            question = {"type": "chat", "chat_id": made["data"]["id"], "question": "flood"}
            await ws.send(json.dumps({**question, "answer_mode": mode}))
            answers = []
            while (frame := await slowly(ws))["data"] is not True:
                assert frame["code"] == 0, frame
                answers.append(frame["data"]["answer"])
        paced = await metric_total(gw.url, "gateway_paced_replies_total") - before
        print(
            f"\nRAGFlow {mode}: {len(whole):,} characters, {len(answers)} answers; paced: {paced:.0f}"
        )
        if mode == "delta":
            assert "".join(answers) == whole
        else:
            grown = [a for a in answers if a]
            assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(grown))
            assert grown[-1] == whole
        assert paced >= 1
    assert "slow websocket dropped" not in gw.log()
