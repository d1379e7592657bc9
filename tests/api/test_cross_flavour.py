"""One chat core behind every flavour: a conversation started from any client is a
chat of its owner, visible (with its tree) and live from every other client, and
invisible to everyone else."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

import jwt
import pytest
import websockets

from tests.clients import PySocket, get_json, post_json, text_of, turn_body
from tests.fakes.upstream import reply_text
from tests.gatewayproc import SECRET, GatewayProcess, make_token

Starter = Callable[[GatewayProcess, str, str], Awaitable[str]]


async def start_nadoo(gateway: GatewayProcess, token: str, question: str) -> str:
    url = f"ws://127.0.0.1:{gateway.port}/ws/chat/s-{uuid.uuid4().hex[:6]}?token={token}"
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "chat", "content": question}))
        while (frame := json.loads(await ws.recv()))["type"] != "response_end":
            pass
    return str(frame["chat_id"])


async def _ragflow_key_and_assistant(gateway: GatewayProcess, token: str) -> tuple[str, str]:
    key = (await post_json(f"{gateway.url}/ragflow/v1/system/new_token", token, None))["data"]
    made = await post_json(f"{gateway.url}/ragflow/api/v1/chats", key["token"], {"name": "bot"})
    return key["token"], made["data"]["id"]


async def start_ragflow_ws(gateway: GatewayProcess, token: str, question: str) -> str:
    key, assistant = await _ragflow_key_and_assistant(gateway, token)
    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/v1/ws/chat?token={key}") as ws:
        await ws.send(json.dumps({"type": "chat", "chat_id": assistant, "question": question}))
        session = None
        while (frame := json.loads(await ws.recv()))["data"] is not True:
            session = frame["data"]["session_id"]
    assert session is not None
    return session


async def start_ragflow_http(gateway: GatewayProcess, token: str, question: str) -> str:
    key, assistant = await _ragflow_key_and_assistant(gateway, token)
    base = f"{gateway.url}/ragflow/api/v1/chats/{assistant}"
    session = (await post_json(f"{base}/sessions", key, {"name": "s"}))["data"]["id"]
    body = {"question": question, "session_id": session, "stream": False}
    await post_json(f"{base}/completions", key, body)
    return str(session)


async def start_backend_controlled(gateway: GatewayProcess, token: str, question: str) -> str:
    history = {
        "currentId": "a1",
        "messages": {
            "u1": {"id": "u1", "role": "user", "content": question},
            "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": ""},
        },
    }
    chat = await post_json(
        f"{gateway.url}/api/v1/chats/new",
        token,
        {"chat": {"title": "New Chat", "history": history}},
    )
    body = {"chat_id": chat["id"], "id": "a1", "model": "fake-model"}
    await post_json(f"{gateway.url}/api/chat/completions", token, body)
    return str(chat["id"])


async def start_web_app(gateway: GatewayProcess, token: str, question: str) -> str:
    sock = await PySocket().connect(gateway.url, token)
    try:
        answer = await post_json(
            f"{gateway.url}/api/chat/completions", token, turn_body(sock.sid, question)
        )
        await sock.wait_ended()
    finally:
        await sock.close()
    return str(answer["chat_id"])


STARTERS: dict[str, Starter] = {
    "nadoo": start_nadoo,
    "ragflow-websocket": start_ragflow_ws,
    "ragflow-http": start_ragflow_http,
    "openwebui-backend-controlled": start_backend_controlled,
    "openwebui-web-app": start_web_app,
}


@pytest.mark.parametrize("flavour", list(STARTERS))
async def test_a_chat_started_anywhere_is_its_owners_everywhere(
    gateway: GatewayProcess, flavour: str
) -> None:
    owner_id = f"x-{uuid.uuid4().hex[:10]}"
    owner = make_token(owner_id)
    stranger = make_token(f"x-{uuid.uuid4().hex[:10]}")
    question = f"hello from {flavour}"
    tab = await PySocket().connect(gateway.url, owner)
    snoop = await PySocket().connect(gateway.url, stranger)
    try:
        chat_id = await STARTERS[flavour](gateway, owner, question)
        await tab.wait_ended()
        # The owner's Open WebUI tab saw the reply live, whole.
        expected = reply_text("fake-model", [{"role": "user", "content": question}])
        replies = {e["message_id"] for e in tab.events if e["chat_id"] == chat_id}
        assert [text_of(tab.events, mid) for mid in replies] == [expected]
        # A chat of the core: listed, with a consistent tree; the answer stored.
        listed = await get_json(f"{gateway.url}/api/v1/chats/", owner)
        assert chat_id in [c["id"] for c in listed]
        chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", owner)
        assert chat["user_id"] == owner_id
        path = chat["chat"]["messages"]
        assert [m["role"] for m in path] == ["user", "assistant"]
        assert path[0]["content"] == question and path[1]["content"] == expected
        assert path[0]["childrenIds"] == [path[1]["id"]] and path[1]["parentId"] == path[0]["id"]
        # Continued from the web app, then from Nadoo: one conversation, one tree.
        await post_json(
            f"{gateway.url}/api/chat/completions",
            owner,
            turn_body(tab.sid, "and then?", chat_id=chat_id, parent_id=path[1]["id"]),
        )
        await tab.wait_ended(2)
        url = f"ws://127.0.0.1:{gateway.port}/ws/chat/s-{uuid.uuid4().hex[:6]}?token={owner}"
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "chat", "content": "last one", "chat_id": chat_id}))
            while json.loads(await ws.recv())["type"] != "response_end":
                pass
        await tab.wait_ended(3)
        chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", owner)
        users = [m["content"] for m in chat["chat"]["messages"] if m["role"] == "user"]
        assert users == [question, "and then?", "last one"]
        # The stranger: nothing live, nothing listed, not found.
        await asyncio.sleep(0.1)
        assert snoop.events == []
        assert chat_id not in [
            c["id"] for c in await get_json(f"{gateway.url}/api/v1/chats/", stranger)
        ]
        await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", stranger, expect=404)
    finally:
        await tab.close()
        await snoop.close()


async def test_one_user_one_identity_across_token_kinds(gateway: GatewayProcess) -> None:
    """Open WebUI's `id` claim, Nadoo's `sub` claim and a RAGFlow key name the same user."""
    user_id = f"x-{uuid.uuid4().hex[:10]}"
    by_id = make_token(user_id)
    by_sub = jwt.encode({"sub": user_id}, SECRET, "HS256")
    key = (await post_json(f"{gateway.url}/ragflow/v1/system/new_token", by_sub, None))["data"]
    chat_id = await start_nadoo(gateway, by_sub, "who am i")
    for token in (by_id, by_sub, key["token"]):
        chats = await get_json(f"{gateway.url}/api/v1/chats/", token)
        assert [c["id"] for c in chats] == [chat_id]
