"""Nadoo's WebSocket endpoints with the `websockets` package, as Nadoo's docs use it:
chat (streaming, continuing, typing, cancel, ping), notifications, workspaces,
`/ws/stats`, and every documented error."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import jwt
import pytest
import websockets

from tests.clients import get_json, post_json
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import SECRET, GatewayProcess

ISO_Z = "%Y-%m-%dT%H:%M:%SZ"


def user() -> tuple[str, str]:
    user_id = f"nadoo-{uuid.uuid4().hex[:10]}"
    # Nadoo's tokens name the user in `sub`.
    token = jwt.encode({"sub": user_id, "exp": int(time.time()) + 600}, SECRET, "HS256")
    return user_id, token


def ws_url(gateway: GatewayProcess, path: str, token: str | None) -> str:
    query = f"?token={token}" if token is not None else ""
    return f"ws://127.0.0.1:{gateway.port}{path}{query}"


async def recv(ws: Any, timeout_s: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    time.strptime(frame["timestamp"], ISO_Z)  # every frame has one, ISO 8601 in UTC
    return frame


async def until(ws: Any, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Frames until one of `kind` (returned first), and everything before it."""
    seen = []
    while True:
        frame = await recv(ws)
        if frame["type"] == kind:
            return frame, seen
        seen.append(frame)


async def chat_client(
    gateway: GatewayProcess, token: str, content: str, **extra: Any
) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """Nadoo's documented Python client: connect, send, append text-deltas until response_end."""
    session_id = f"session-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session_id}", token)) as ws:
        data = await recv(ws)
        assert data["type"] == "connected" and data["session_id"] == session_id
        await ws.send(json.dumps({"type": "chat", "content": content, **extra}))
        full_response = ""
        frames = []
        async for message in ws:
            data = json.loads(message)
            frames.append(data)
            if data["type"] == "text-delta":
                full_response += data["text"]
            elif data["type"] in ("response_end", "error"):
                break
    return data, full_response, frames


# -- chat ------------------------------------------------------------------------
async def test_the_documented_chat_flow_streams_a_reply_into_a_stored_chat(
    gateway: GatewayProcess,
) -> None:
    user_id, token = user()
    end, text, frames = await chat_client(
        gateway, token, "Summarize the Q4 report", application_id="fake-model"
    )
    expected = reply_text("fake-model", [{"role": "user", "content": "Summarize the Q4 report"}])
    assert end["type"] == "response_end"
    assert text == end["full_response"] == expected
    start = frames[0]
    assert start["type"] == "response_start" and start["message_id"] == end["message_id"]
    deltas = [f for f in frames if f["type"] == "text-delta"]
    assert [f["index"] for f in deltas] == list(range(len(deltas)))
    assert end["tokens_used"] > 0 and end["response_time"] >= 0
    # The chat is a chat of the core, in the user's Open WebUI list, as a history tree.
    chat = await get_json(f"{gateway.url}/api/v1/chats/{end['chat_id']}", token)
    assert chat["user_id"] == user_id and chat["title"] == "Summarize the Q4 report"
    history = chat["chat"]["history"]
    answer = history["messages"][end["message_id"]]
    question = history["messages"][answer["parentId"]]
    assert answer["content"] == expected and answer["done"] is True
    assert question["content"] == "Summarize the Q4 report" and question["childrenIds"] == [
        answer["id"]
    ]
    listed = await get_json(f"{gateway.url}/api/v1/chats/", token)
    assert [c["id"] for c in listed] == [end["chat_id"]]


async def test_a_chat_continues_by_chat_id_on_any_socket(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    first, _, _ = await chat_client(gateway, token, "first question")
    second, text, _ = await chat_client(
        gateway, token, "second question", chat_id=first["chat_id"], message="ignored alias"
    )
    assert second["chat_id"] == first["chat_id"]
    assert text == reply_text("fake-model", [{"role": "user", "content": "second question"}])
    seen = fake_upstream.requests_for("second question")[-1].body["messages"]
    assert [m["content"] for m in seen if m["role"] == "user"] == [
        "first question",
        "second question",
    ]
    # Nadoo's other pages send {"type": "message", "message": ...}: the same thing.
    third, _, _ = await chat_client(gateway, token, "", chat_id=first["chat_id"])
    assert third["type"] == "error"
    session = f"session-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "message", "message": "as message"}))
        end, _ = await until(ws, "response_end")
        assert "as message" in end["full_response"]


async def test_ping_typing_and_leaving_reach_the_sessions_other_sockets(
    gateway: GatewayProcess,
) -> None:
    # A session is its user's (SECURITY.md): its other members are the user's other sockets.
    user_id, token = user()
    session = f"session-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as a:
        await recv(a)
        async with websockets.connect(ws_url(gateway, f"/api/ws/chat/{session}", token)) as b:
            await recv(b)
            await b.send(json.dumps({"type": "typing"}))
            typing = await recv(a)
            assert typing["type"] == "typing" and typing["user_id"] == user_id
            await b.send(json.dumps({"type": "ping"}))
            assert (await recv(b))["type"] == "pong"  # not its own typing first
        gone = await recv(a)
        assert gone["type"] == "user_disconnected" and gone["user_id"] == user_id


async def test_a_reply_in_a_session_reaches_every_member(gateway: GatewayProcess) -> None:
    _, token = user()
    session = f"session-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as a:
        await recv(a)
        async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as b:
            await recv(b)
            await a.send(json.dumps({"type": "chat", "content": "shared"}))
            end_a, _ = await until(a, "response_end")
            end_b, _ = await until(b, "response_end")
            assert end_a == end_b


async def test_cancel_ends_the_reply_with_its_partial_text(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    session = f"session-{uuid.uuid4().hex[:8]}"
    question = f"cancel me {uuid.uuid4().hex}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as ws:
        await recv(ws)
        await ws.send(
            json.dumps({"type": "chat", "content": question, "application_id": "fake-slow"})
        )
        text = ""
        while len(text.split()) < 4:
            frame = await recv(ws)
            text += frame.get("text", "")
        await ws.send(json.dumps({"type": "cancel"}))
        end, rest = await until(ws, "response_end")
    text += "".join(f["text"] for f in rest if f["type"] == "text-delta")
    assert end["cancelled"] is True and end["full_response"] == text
    assert 0 < len(text) < len(reply_text("fake-slow", []))
    (request,) = fake_upstream.requests_for(question)
    assert await asyncio.to_thread(request.ended.wait, 5) and request.disconnected
    chat = await get_json(f"{gateway.url}/api/v1/chats/{end['chat_id']}", token)
    stored = chat["chat"]["history"]["messages"][end["message_id"]]
    assert stored["content"] == text and stored["done"] is True


# -- errors: an error frame, and the connection stays open --------------------------
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "chat"}', "missing_content"),
        ('{"type": "chat", "content": "  "}', "missing_content"),
        ('{"type": "chat", "content": "x", "chat_id": "no-such-chat"}', "not_found"),
    ],
)
async def test_a_bad_frame_gets_an_error_frame_and_the_socket_stays_open(
    gateway: GatewayProcess, frame: str, code: str
) -> None:
    _, token = user()
    async with websockets.connect(ws_url(gateway, "/ws/chat/s-errors", token)) as ws:
        await recv(ws)
        await ws.send(frame)
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == code
        assert error["data"] == {"message": error["message"], "code": code}
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_another_users_chat_cannot_be_continued(gateway: GatewayProcess) -> None:
    _, alice = user()
    _, bob = user()
    first, _, _ = await chat_client(gateway, alice, "alice's secret")
    error, _, _ = await chat_client(gateway, bob, "let me in", chat_id=first["chat_id"])
    assert error["type"] == "error" and error["code"] == "not_found"
    assert "secret" not in json.dumps(error)
    chat = await get_json(f"{gateway.url}/api/v1/chats/{first['chat_id']}", alice)
    assert len(chat["chat"]["history"]["messages"]) == 2


def bad_tokens() -> list[tuple[str, str | None]]:
    now = int(time.time())
    unsigned = jwt.encode({"sub": "x"}, key=None, algorithm="none")
    return [
        ("missing", None),
        ("garbage", "garbage"),
        ("expired", jwt.encode({"sub": "x", "exp": now - 10}, SECRET, "HS256")),
        ("foreign", jwt.encode({"sub": "x"}, "another-key-of-at-least-32-bytes!", "HS256")),
        ("alg-none", unsigned),
        ("unknown-api-key", "sk-" + "0" * 32),
    ]


@pytest.mark.parametrize(("name", "token"), bad_tokens(), ids=[n for n, _ in bad_tokens()])
@pytest.mark.parametrize("path", ["/ws/chat/s1", "/ws/workspaces/w1", "/ws/notifications/x"])
async def test_a_bad_token_is_accepted_then_closed_1008_invalid_token(
    gateway: GatewayProcess, name: str, token: str | None, path: str
) -> None:
    async with websockets.connect(ws_url(gateway, path, token)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "Invalid token")


async def test_an_oversized_frame_is_closed_1009(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway({"GATEWAY_MAX_FRAME_BYTES": "4096"})
    _, token = user()
    async with websockets.connect(ws_url(gw, "/ws/chat/s-big", token)) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "chat", "content": "x" * 5000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# -- notifications ------------------------------------------------------------------
async def test_notifications_are_the_token_users_only(gateway: GatewayProcess) -> None:
    user_id, token = user()
    other_id, _ = user()
    async with websockets.connect(ws_url(gateway, f"/ws/notifications/{other_id}", token)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with websockets.connect(ws_url(gateway, f"/ws/notifications/{user_id}", token)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
        await ws.send(json.dumps({"type": "chat", "content": "no"}))
        assert (await recv(ws))["type"] == "error"


async def test_a_reply_that_finishes_unwatched_becomes_a_notification(
    gateway: GatewayProcess,
) -> None:
    user_id, token = user()
    async with websockets.connect(ws_url(gateway, f"/ws/notifications/{user_id}", token)) as ws:
        # A backend script asks for a reply while no chat socket of the user is open.
        history = {
            "currentId": "a1",
            "messages": {
                "u1": {"id": "u1", "role": "user", "content": "while you were away"},
                "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": ""},
            },
        }
        chat = await post_json(
            f"{gateway.url}/api/v1/chats/new", token, {"chat": {"title": "t", "history": history}}
        )
        body = {"chat_id": chat["id"], "id": "a1", "model": "fake-model"}
        await post_json(f"{gateway.url}/api/chat/completions", token, body)
        note = await recv(ws)
    assert note["type"] == "notification"
    assert note["notification"]["action_url"] == f"/c/{chat['id']}"
    assert note["notification"]["title"] and "Fake reply" in note["notification"]["body"]


# -- workspaces -----------------------------------------------------------------------
async def test_workspace_members_hear_joins_broadcasts_and_leaves(
    gateway: GatewayProcess,
) -> None:
    _, alice = user()
    bob_id, bob = user()
    workspace = f"ws-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(ws_url(gateway, f"/ws/workspaces/{workspace}", alice)) as a:
        async with websockets.connect(ws_url(gateway, f"/ws/workspaces/{workspace}", bob)) as b:
            joined = await recv(a)
            assert joined["type"] == "user_joined" and joined["user_id"] == bob_id
            update = {"type": "document_updated", "document_id": "doc-456", "action": "edited"}
            await b.send(json.dumps(update))
            relayed = await recv(a)
            assert relayed == {**update, "user_id": bob_id, "timestamp": relayed["timestamp"]}
            await b.send(json.dumps({"type": "ping"}))
            assert (await recv(b))["type"] == "pong"  # the sender does not get its own
            await b.send(json.dumps({"type": "delete_everything"}))
            assert (await recv(b))["code"] == "unknown_type"
        left = await recv(a)
        assert left["type"] == "user_left" and left["user_id"] == bob_id


async def test_ws_stats_count_connections_sessions_and_users(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway()
    alice_id, alice = user()
    bob_id, bob = user()
    # The first user to sign up is an admin; make one to read every user's counts.
    signed = await post_json(
        f"{gw.url}/api/v1/auths/signup",
        None,
        {"email": "admin@example.com", "password": "correct horse", "name": "Admin"},
    )
    admin = signed["token"]
    async with (
        websockets.connect(ws_url(gw, "/ws/chat/s-a", alice)) as a1,
        websockets.connect(ws_url(gw, "/ws/chat/s-a", alice)) as a2,
        websockets.connect(ws_url(gw, "/ws/chat/s-b", bob)) as b1,
        websockets.connect(ws_url(gw, "/ws/workspaces/w1", bob)) as b2,
    ):
        for ws in (a1, a2, b1):
            await recv(ws)
        await b2.send(json.dumps({"type": "ping"}))  # a workspace does not greet: ask
        assert (await recv(b2))["type"] == "pong"
        stats = await get_json(f"{gw.url}/ws/stats", admin)
        # An admin also sees connections by kind and by replica (one replica here).
        replicas = stats["details"].pop("replicas")
        assert list(replicas.values()) == [4], replicas
        assert stats == {
            "total_connections": 4,
            "active_sessions": 3,
            "active_users": 2,
            "details": {
                "sessions": {"s-a": 2, "s-b": 1, "workspace_w1": 1},
                "users": {alice_id: 2, bob_id: 2},
                "kinds": {"nadoo-chat": 3, "nadoo-workspace": 1},
            },
        }
        # Everyone's totals, but only her own sessions and user entry.
        mine = await get_json(f"{gw.url}/api/ws/stats", alice)
        assert mine == {
            "total_connections": 4,
            "active_sessions": 3,
            "active_users": 2,
            "details": {"sessions": {"s-a": 2}, "users": {alice_id: 2}},
        }
        await get_json(f"{gw.url}/ws/stats", "garbage", expect=401)
    for _ in range(50):
        if (await get_json(f"{gw.url}/ws/stats", admin))["total_connections"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await get_json(f"{gw.url}/ws/stats", admin))["total_connections"] == 0


@pytest.mark.parametrize("path", ["/ws/chat/", "/ws/workspaces/"])
async def test_a_path_id_past_its_bound_is_refused_before_the_upgrade(
    gateway: GatewayProcess, path: str
) -> None:
    # A session's id goes into its room's name, on every one of its events.
    _, token = user()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(gateway, path + "s" * 257, token))
    assert refused.value.response.status_code == 400
    async with websockets.connect(ws_url(gateway, path + "s" * 256, token)) as ws:
        assert ws.response is not None and ws.response.status_code == 101
