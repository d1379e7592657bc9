"""Resuming a reply after a cut, on every transport, on one replica: the text rebuilt
from what came before the cut and what the resume sent equals the upstream's
exactly (no duplicate, no gap); a late resume gets the stored snapshot and says so;
another user's reply is refused."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

import aiohttp
import websockets

from tests.clients import PySocket, turn_body
from tests.gatewayproc import SECRET, GatewayProcess, make_token

SLOW = [f"w{i} " for i in range(64)]
SLOW_TEXT = "".join(SLOW)


def nadoo_user() -> tuple[str, str]:
    import jwt

    user_id = f"resume-{uuid.uuid4().hex[:10]}"
    return user_id, jwt.encode({"sub": user_id, "exp": int(time.time()) + 600}, SECRET, "HS256")


async def recv(ws: Any, timeout_s: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return frame


async def nadoo_cut_and_resume(gateway: GatewayProcess, cut_after: int) -> str:
    """Ask fake-slow, keep `cut_after` text-deltas, drop the socket, reconnect
    (another session id), resume; the text as the client rebuilds it."""
    _user, token = nadoo_user()
    base = f"ws://127.0.0.1:{gateway.port}/ws/chat"
    text, last_seq, message_id, chat_id = "", -1, "", ""
    async with websockets.connect(f"{base}/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}") as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        deltas = 0
        while deltas < cut_after:
            frame = await recv(ws)
            if frame["type"] == "response_start":
                message_id, chat_id = frame["message_id"], frame["chat_id"]
            if frame["type"] == "text-delta":
                text += frame["text"]
                deltas += 1
            last_seq = frame.get("seq", last_seq)
    async with websockets.connect(f"{base}/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}") as ws:
        assert (await recv(ws))["type"] == "connected"
        resume = {"type": "resume", "message_id": message_id, "after": last_seq}
        await ws.send(json.dumps({**resume, "chat_id": chat_id}))
        while True:
            frame = await recv(ws)
            if frame["type"] == "text-delta":
                assert frame["seq"] > last_seq
                last_seq = frame["seq"]
                text += frame["text"]
            elif frame["type"] == "response_end":
                assert frame["full_response"] == SLOW_TEXT.strip()
                return text


async def test_nadoo_resume_rebuilds_the_text_exactly(gateway: GatewayProcess) -> None:
    rng = random.Random(16)
    cuts = [1, 63, *rng.sample(range(2, 63), 4)]
    texts = await asyncio.gather(*(nadoo_cut_and_resume(gateway, cut) for cut in cuts))
    assert texts == [SLOW_TEXT] * len(cuts)


async def test_a_tab_opened_mid_reply_gets_the_text_so_far_then_the_rest(
    gateway: GatewayProcess,
) -> None:
    token = make_token(f"sio-{uuid.uuid4().hex[:8]}")
    first = await PySocket().connect(gateway.url, token)
    body = turn_body(first.sid, "go", "fake-slow")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/api/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 200
    await first.wait_until(lambda evs: sum(e["type"] == "chat:message:delta" for e in evs) >= 10)
    tab = await PySocket().connect(gateway.url, token)
    await tab.wait_ended()
    await first.wait_ended()
    replaced = [e for e in tab.events if e["type"] == "chat:message"]
    assert len(replaced) == 1 and replaced[0]["data"]["snapshot"] == "exact"
    later = [e["data"]["content"] for e in tab.events if e["type"] == "chat:message:delta"]
    assert replaced[0]["data"]["content"] + "".join(later) == SLOW_TEXT
    # The first tab, connected throughout, got the deltas alone.
    assert not [e for e in first.events if e["type"] == "chat:message"]
    assert (
        "".join(e["data"]["content"] for e in first.events if e["type"] == "chat:message:delta")
        == SLOW_TEXT
    )
    await tab.close()
    await first.close()


async def test_sse_attach_resumes_after_last_event_id(gateway: GatewayProcess) -> None:
    user_id, token = nadoo_user()
    base = f"ws://127.0.0.1:{gateway.port}/ws/chat"
    async with websockets.connect(f"{base}/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}") as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        start = await recv(ws)
        assert start["type"] == "response_start"
    url = f"{gateway.url}/api/v1/chats/{start['chat_id']}/messages/{start['message_id']}/stream"
    text, last = "", None
    async with aiohttp.ClientSession() as http:
        for cut in (5, 20, None):
            headers = {"Authorization": f"Bearer {token}"}
            if last is not None:
                headers["Last-Event-ID"] = last
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Accel-Buffering"] == "no"
                events = 0
                event_id = None
                async for line in resp.content:
                    line = line.decode().rstrip("\n")
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: "):
                        env = json.loads(line[6:])
                        if env["data"]["type"] == "chat:message:delta":
                            text += env["data"]["data"]["content"]
                            events += 1
                    elif line == "" and event_id is not None:
                        last = event_id
                        if cut is not None and events >= cut:
                            break
                        if env["data"]["type"] == "chat:active":
                            break
        assert text == SLOW_TEXT
        # The end seen: nothing more to send.
        async with http.get(
            url, headers={"Authorization": f"Bearer {token}", "Last-Event-ID": last or ""}
        ) as resp:
            assert resp.status == 204
        # Another user: not found.
        _other, other = nadoo_user()
        async with http.get(url, headers={"Authorization": f"Bearer {other}"}) as resp:
            assert resp.status == 404
    del user_id
