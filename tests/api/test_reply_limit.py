"""GATEWAY_MAX_REPLIES_PER_USER: a user's running replies are bounded, the next one
is refused in its client's own protocol before anything is written, and a slot is
given back when a reply ends (finished, stopped, or its stream closed)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
import websockets

from tests.api.test_nadoo_ws import recv, user, ws_url
from tests.clients import get_json, post_json, turn_body
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess

LIMIT = 2
TIMEOUT_S = 15


@pytest.fixture
def limited(start_gateway: Any, fake_upstream: FakeUpstream) -> GatewayProcess:
    env = {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_MAX_REPLIES_PER_USER": str(LIMIT)}
    gateway: GatewayProcess = start_gateway(env)
    return gateway


async def nadoo_reply(stack: AsyncExitStack, gw: GatewayProcess, token: str) -> Any:
    """A Nadoo socket whose slow reply has started (left running)."""
    session = f"/ws/chat/limit-{uuid.uuid4().hex[:8]}"
    ws = await stack.enter_async_context(websockets.connect(ws_url(gw, session, token)))
    assert (await recv(ws))["type"] == "connected"
    await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-crawl"}))
    assert (await recv(ws))["type"] == "response_start"
    return ws


async def nadoo_refused(gw: GatewayProcess, token: str) -> dict[str, Any]:
    session = f"/ws/chat/limit-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gw, session, token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": "one more"}))
        return await recv(ws)


async def openai_post(
    http: aiohttp.ClientSession, gw: GatewayProcess, token: str, model: str = "fake-model"
) -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_next_reply_past_the_limit_is_refused_in_each_flavour(
    limited: GatewayProcess,
) -> None:
    _, token = user()
    _, other = user()
    async with AsyncExitStack() as stack:
        first = await nadoo_reply(stack, limited, token)
        await nadoo_reply(stack, limited, token)
        # Nadoo: an error frame, the socket stays open.
        error = await nadoo_refused(limited, token)
        assert (error["type"], error["code"]) == ("error", "rate_limited"), error
        assert f"at most {LIMIT} at once" in error["message"]
        async with aiohttp.ClientSession() as http:
            # OpenAI: 429 in OpenAI's shape.
            status, answer = await openai_post(http, limited, token)
            assert status == 429 and answer["error"]["code"] == "rate_limited", answer
            # Open WebUI's web app turn: 429, and no chat was written.
            headers = {"Authorization": f"Bearer {token}"}
            body = turn_body("no-socket", "one more", "fake-model")
            url = f"{limited.url}/api/chat/completions"
            async with http.post(url, json=body, headers=headers) as resp:
                assert resp.status == 429, await resp.text()
            async with http.get(f"{limited.url}/api/v1/chats/", headers=headers) as resp:
                titles = [chat["title"] for chat in await resp.json()]
            assert "one more" not in " ".join(titles), titles
            # Another user is not held back.
            status, answer = await openai_post(http, limited, other)
            assert status == 200, answer
            # Stopping one gives its slot back.
            await first.send(json.dumps({"type": "cancel"}))
            while (await recv(first))["type"] != "response_end":
                pass
            status, answer = await _eventually_ok(http, limited, token)
            assert status == 200, answer


async def test_a_new_ragflow_session_refused_at_the_limit_is_not_stored(
    limited: GatewayProcess,
) -> None:
    # A question without a session opens one, stored with its first turn in one
    # write: refused before it, the session is not left behind, empty.
    _, token = user()
    key = (await post_json(f"{limited.url}/ragflow/v1/system/new_token", token, None))["data"]
    api = f"{limited.url}/ragflow/api/v1/chats"
    assistant = (await post_json(api, key["token"], {"name": "bot"}))["data"]["id"]
    async with AsyncExitStack() as stack:
        running = [await nadoo_reply(stack, limited, token) for _ in range(LIMIT)]
        url = f"ws://127.0.0.1:{limited.port}/v1/ws/chat?token={key['token']}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "chat", "chat_id": assistant, "question": "more"}))
            refused = await frame_of(ws)
        assert refused["code"] != 0 and f"at most {LIMIT} at once" in refused["message"], refused
        sessions = await get_json(f"{api}/{assistant}/sessions", key["token"])
        assert sessions["code"] == 0 and sessions["data"] == [], sessions
        for ws in running:  # stopped: their slots come back
            await ws.send(json.dumps({"type": "cancel"}))
            while (await recv(ws))["type"] != "response_end":
                pass
    # Below the limit again (once the stopped replies' slots are back), the same
    # question opens a session with its turn in it.
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "chat", "chat_id": assistant, "question": "more"}))
            first = await frame_of(ws)
        if first["code"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert first["code"] == 0, first
    session_id = first["data"]["session_id"]
    sessions = await get_json(f"{api}/{assistant}/sessions", key["token"])
    (session,) = sessions["data"]
    assert session["id"] == session_id
    assert [m["content"] for m in session["messages"] if m["role"] == "user"] == ["more"]


async def frame_of(ws: Any) -> dict[str, Any]:
    """A RAGFlow socket's next frame."""
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    return frame


async def _eventually_ok(
    http: aiohttp.ClientSession, gw: GatewayProcess, token: str
) -> tuple[int, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status, answer = await openai_post(http, gw, token)
        if status != 429 or time.monotonic() > deadline:
            return status, answer
        await asyncio.sleep(0.1)


async def test_an_open_stream_holds_its_slot_until_it_is_closed(limited: GatewayProcess) -> None:
    """Pure-API streams count too: a client that leaves mid-stream gives its slot back."""
    _, token = user()
    body = {"model": "fake-crawl", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with AsyncExitStack() as stack:
            for _ in range(LIMIT):
                resp = await stack.enter_async_context(
                    http.post(f"{limited.url}/v1/chat/completions", json=body, headers=headers)
                )
                assert resp.status == 200
                await _first_chunk(resp)
            status, answer = await openai_post(http, limited, token)
            assert status == 429, answer
        # The streams closed (the client left): their slots come back.
        status, answer = await _eventually_ok(http, limited, token)
        assert status == 200, answer


async def _first_chunk(resp: aiohttp.ClientResponse) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        async for line in resp.content:
            if line.startswith(b"data: {"):
                return
