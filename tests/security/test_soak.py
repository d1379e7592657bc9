"""A soak: mixed traffic on every flavour, with clients that leave mid-reply, against
one gateway, for SOAK_S seconds (`GATEWAY_SOAK_S`; 60 in the test command, 1,800 for
the long run).  Afterwards:

* memory and open file descriptors are back near what they were after a warm-up;
* every reply that was started is finished in the store (done, with its text, an
  error note, or cancelled), none left half-written;
* no client ever received another user's event.

The counts are printed (`-s`): replies per flavour, clients that left mid-reply.
The long run: `GATEWAY_SOAK_S=1800 .venv/bin/python -m pytest -s -o timeout=2000
tests/security/test_soak.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil
import websockets

from tests.clients import PySocket, turn_body
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

SOAK_S = float(os.environ.get("GATEWAY_SOAK_S", "60"))
USERS = 6
TIMEOUT_S = 30
SEED = 20261205
# After the run, once idle: what the process may keep beyond the warm-up's level.
RSS_SLACK_MB = 40
FDS_SLACK = 16


@dataclass
class User:
    user_id: str
    token: str
    chats: set[str] = field(default_factory=set)  # every chat id this user's clients saw
    ragflow_key: str = ""
    assistant_id: str = ""
    foreign: list[Any] = field(default_factory=list)  # events naming another user's chat


@dataclass
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    left: Counter[str] = field(default_factory=Counter)


async def openai_stream(
    http: aiohttp.ClientSession, gw: GatewayProcess, u: User, leave: bool
) -> None:
    body = {"model": "fake-slow", "stream": True, "messages": [{"role": "user", "content": "soak"}]}
    headers = {"Authorization": f"Bearer {u.token}"}
    async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if leave and line.startswith(b"data: {"):
                return  # gone mid-reply
            if line.strip() == b"data: [DONE]":
                return


async def nadoo_chat(gw: GatewayProcess, u: User, leave: bool) -> None:
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/soak-{uuid.uuid4().hex[:6]}?token={u.token}"
    async with websockets.connect(url) as ws:
        await ws.recv()  # connected
        await ws.send(
            json.dumps({"type": "chat", "content": "soak", "application_id": "fake-slow"})
        )
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            if frame.get("chat_id"):
                u.chats.add(frame["chat_id"])
            if frame["type"] == "text-delta" and leave:
                return
            if frame["type"] in ("response_end", "error"):
                return


async def ragflow_chat(gw: GatewayProcess, u: User, leave: bool) -> None:
    """A WeChat mini-program's turn over RAGFlow's WebSocket (its assistant's session)."""
    url = f"ws://127.0.0.1:{gw.port}/v1/ws/chat?token={u.ragflow_key}"
    async with websockets.connect(url) as ws:
        ask = {"type": "chat", "chat_id": u.assistant_id, "question": "soak"}
        await ws.send(json.dumps(ask))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            assert frame["code"] == 0, frame
            if frame["data"] is True:
                return
            u.chats.add(frame["data"]["session_id"])  # a RAGFlow session is a chat
            if leave:
                return


async def ragflow_account(http: aiohttp.ClientSession, gw: GatewayProcess, u: User) -> None:
    headers = {"Authorization": f"Bearer {u.token}"}
    async with http.post(f"{gw.url}/ragflow/v1/system/new_token", headers=headers) as resp:
        u.ragflow_key = (await resp.json())["data"]["token"]
    body = {"name": "soak bot", "llm": {"model_name": "fake-slow"}}
    headers = {"Authorization": f"Bearer {u.ragflow_key}"}
    async with http.post(f"{gw.url}/ragflow/api/v1/chats", json=body, headers=headers) as resp:
        u.assistant_id = (await resp.json())["data"]["id"]


async def socketio_turn(gw: GatewayProcess, u: User, leave: bool) -> None:
    sock = await PySocket().connect(gw.url, u.token)
    try:
        body = turn_body(sock.sid, "soak", "fake-slow")
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {u.token}"}
            url = f"{gw.url}/api/chat/completions"
            async with http.post(url, json=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
        u.chats.add(answer["chat_id"])
        if leave:
            await sock.wait_until(lambda events: len(events) >= 3, TIMEOUT_S)
        else:
            await sock.wait_until(
                lambda events: any(
                    e["message_id"] == body["id"] and e["type"] == "chat:completion" for e in events
                ),
                TIMEOUT_S,
            )
    finally:
        await sock.close()
    # Every event this tab got was about this user's own chats.
    u.foreign += [e for e in sock.events if e["chat_id"] not in u.chats]


async def client(
    gw: GatewayProcess, u: User, until: float, tally: Tally, rng: random.Random
) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            kind = rng.choice(["openai", "nadoo", "socketio", "ragflow"])
            leave = rng.random() < 0.3
            if kind == "openai":
                await openai_stream(http, gw, u, leave)
            elif kind == "nadoo":
                await nadoo_chat(gw, u, leave)
            elif kind == "socketio":
                await socketio_turn(gw, u, leave)
            else:
                await ragflow_chat(gw, u, leave)
            (tally.left if leave else tally.done)[kind] += 1


async def unfinished(gw: GatewayProcess, u: User) -> list[str]:
    """The user's assistant messages the store still has as not done."""
    headers = {"Authorization": f"Bearer {u.token}"}
    left: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for chat_id in sorted(u.chats):
            async with http.get(f"{gw.url}/api/v1/chats/{chat_id}") as resp:
                assert resp.status == 200, (chat_id, resp.status)
                chat = await resp.json()
            for message in chat["chat"]["history"]["messages"].values():
                if message["role"] == "assistant" and message.get("done") is False:
                    left.append(f"{chat_id}/{message['id']}")
    return left


def footprint(process: psutil.Process) -> tuple[float, int]:
    return process.memory_info().rss / 2**20, process.num_fds()


async def settled(process: psutil.Process) -> tuple[float, int]:
    """Once the replies the departed clients left running have ended."""
    await asyncio.sleep(3)
    return footprint(process)


async def test_mixed_traffic_with_departures_leaves_nothing_behind(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url})
    assert gw.proc is not None
    process = psutil.Process(gw.proc.pid)
    rng = random.Random(SEED)
    users = [User(f"soak-{n}", make_token(f"soak-{n}")) for n in range(USERS)]
    async with aiohttp.ClientSession() as http:
        for u in users:
            await ragflow_account(http, gw, u)
    # Warm-up: every kind of client once per user, so the baseline has what stays.
    warm = Tally()
    await asyncio.gather(*(client(gw, u, time.monotonic() + 5, warm, rng) for u in users))
    rss_before, fds_before = await settled(process)

    tally = Tally()
    began = time.monotonic()
    await asyncio.gather(
        *(client(gw, u, began + SOAK_S, tally, random.Random(rng.random())) for u in users)
    )
    took = time.monotonic() - began
    rss_after, fds_after = await settled(process)

    left = [item for u in users for item in await unfinished(gw, u)]
    foreign = [e for u in users for e in u.foreign]
    print(
        f"\nsoak: {took:.0f} s, {USERS} users; replies read to the end {dict(tally.done)}, "
        f"clients gone mid-reply {dict(tally.left)}; RSS {rss_before:.0f} → {rss_after:.0f} MB, "
        f"open files {fds_before} → {fds_after}; chats checked "
        f"{sum(len(u.chats) for u in users)}, unfinished {len(left)}, foreign events {len(foreign)}"
    )
    assert sum(tally.done.values()) > 0 and sum(tally.left.values()) > 0
    assert set(tally.done) | set(tally.left) == {"openai", "nadoo", "socketio", "ragflow"}
    assert foreign == [], foreign[:3]
    assert left == [], left[:5]
    assert rss_after < rss_before + RSS_SLACK_MB, (rss_before, rss_after)
    assert fds_after <= fds_before + FDS_SLACK, (fds_before, fds_after)
