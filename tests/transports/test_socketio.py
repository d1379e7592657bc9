"""Socket.IO at `/ws/socket.io` end to end: the web app's send path, every transport,
the JS socket.io-client and python-socketio, tabs and strangers, stop, failures, origins."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
import socketio

from tests.clients import (
    JSSocket,
    PySocket,
    completion_of,
    ended,
    get_json,
    post_json,
    text_of,
    turn_body,
)
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token


def user() -> tuple[str, str]:
    user_id = f"sio-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id, name=user_id.upper())


async def turn(gateway: GatewayProcess, token: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    return answer


def assert_one_whole_reply(events: list[dict[str, Any]], message_id: str, text: str) -> None:
    mine = [e for e in events if e["message_id"] == message_id]
    kinds = [e["type"] for e in mine]
    assert kinds[0] == "chat:active" and mine[0]["data"] == {"active": True}, kinds
    assert ended(mine[-1]), kinds
    assert kinds.index("chat:completion") < len(kinds) - 1
    assert text_of(events, message_id) == text
    completion = completion_of(events, message_id)
    assert completion["done"] is True and completion["content"] == text
    assert completion["usage"]["total_tokens"] > 0


# -- a whole reply, per client and transport -----------------------------------------
@pytest.mark.parametrize(
    ("client", "transports", "final_transport"),
    [
        ("js", "websocket", "websocket"),
        ("js", "polling", "polling"),
        ("js", "polling,websocket", "websocket"),
        ("py", "websocket", "websocket"),
        ("py", "polling", "polling"),
        ("py", "polling,websocket", "websocket"),
    ],
)
async def test_a_whole_reply_reaches_each_client_on_each_transport(
    gateway: GatewayProcess, client: str, transports: str, final_transport: str
) -> None:
    _, token = user()
    question = f"tell me about {client} over {transports}"
    sock: JSSocket | PySocket
    if client == "js":
        sock = await JSSocket().start(gateway.url, token, transports=transports)
    else:
        sock = await PySocket().connect(gateway.url, token, transports.split(","))
    try:
        body = turn_body(sock.sid, question)
        answer = await turn(gateway, token, body)
        assert answer["status"] is True and len(answer["task_ids"]) == 1 and answer["chat_id"]
        if isinstance(sock, JSSocket):
            await sock.wait_for("done")
            upgraded = [line["transport"] for line in sock.lines if line["kind"] == "upgraded"]
            connected = sock.lines[0]["transport"]
            assert (upgraded or [connected]) == [final_transport]
        else:
            await sock.wait_ended()
            assert sock.client.transport() == final_transport
        expected = reply_text("fake-model", [{"role": "user", "content": question}])
        assert_one_whole_reply(sock.events, body["id"], expected)
        assert {e["chat_id"] for e in sock.events} == {answer["chat_id"]}
        assert completion_of(sock.events, body["id"])["title"] == question
        titles = [e["data"] for e in sock.events if e["type"] == "chat:title"]
        assert titles == [question]
    finally:
        await sock.close()
    # The chat and its reply were stored before chat:completion went out.
    chat = await get_json(f"{gateway.url}/api/v1/chats/{answer['chat_id']}", token)
    messages = chat["chat"]["history"]["messages"]
    assert messages[body["id"]]["content"] == expected and messages[body["id"]]["done"] is True
    assert chat["chat"]["history"]["currentId"] == body["id"]


async def test_every_tab_of_the_user_receives_the_reply_and_no_one_else(
    gateway: GatewayProcess,
) -> None:
    alice_id, alice = user()
    _, bob = user()
    tab1 = await PySocket().connect(gateway.url, alice)
    tab2 = await JSSocket().start(gateway.url, alice, transports="polling")
    stranger = await PySocket().connect(gateway.url, bob)
    anonymous = await PySocket().connect(gateway.url, None)
    forged = await PySocket().connect(
        gateway.url, make_token(alice_id, secret="a-foreign-key-of-at-least-32-bytes!")
    )
    try:
        body = turn_body(tab1.sid, "two tabs")
        await turn(gateway, alice, body)
        await tab1.wait_ended()
        await tab2.wait_for("done")
        expected = reply_text("fake-model", [{"role": "user", "content": "two tabs"}])
        assert_one_whole_reply(tab1.events, body["id"], expected)
        assert_one_whole_reply(tab2.events, body["id"], expected)
        # A second reply of bob's own reaches bob only; so the silence above is not a fluke.
        bob_body = turn_body(stranger.sid, "bob's turn")
        await turn(gateway, bob, bob_body)
        await stranger.wait_ended()
        assert {e["message_id"] for e in stranger.events} == {bob_body["id"]}
        assert anonymous.events == [] and forged.events == []
        assert {e["message_id"] for e in tab1.events} == {body["id"]}
    finally:
        for sock in (tab1, tab2, stranger, anonymous, forged):
            await sock.close()


async def test_user_join_authenticates_a_socket_opened_without_a_token(
    gateway: GatewayProcess,
) -> None:
    alice_id, alice = user()
    js = await JSSocket().start(gateway.url, alice, auth_in_handshake=False, user_join=True)
    py = await PySocket().connect(gateway.url, None)
    try:
        ack = await js.wait_for("ack")
        assert ack["data"] == {"id": alice_id, "name": alice_id.upper()}
        assert await py.client.call("user-join", {"auth": {"token": "garbage"}}) is None
        assert await py.client.call("user-join", {"nope": 1}) is None
        body = turn_body(js.sid, "joined late")
        await turn(gateway, alice, body)
        await js.wait_for("done")
        expected = reply_text("fake-model", [{"role": "user", "content": "joined late"}])
        assert_one_whole_reply(js.events, body["id"], expected)
        assert py.events == []
    finally:
        await js.close()
        await py.close()


async def test_events_chat_join_is_acked_for_own_chats_only(gateway: GatewayProcess) -> None:
    _, alice = user()
    _, bob = user()
    sock = await PySocket().connect(gateway.url, alice)
    other = await PySocket().connect(gateway.url, bob)
    try:
        body = turn_body(sock.sid, "a chat to join")
        chat_id = (await turn(gateway, alice, body))["chat_id"]
        await sock.wait_ended()
        join = {"chat_id": chat_id, "data": {"type": "join"}}
        assert await sock.client.call("events:chat", join) is True
        assert await other.client.call("events:chat", join) is False
        assert await sock.client.call("events:chat", {"bad": True}) is None
        await sock.client.emit(
            "events:chat", {"chat_id": chat_id, "data": {"type": "last_read_at"}}
        )
        for _ in range(50):
            listed = await get_json(f"{gateway.url}/api/v1/chats/", alice)
            if listed[0]["last_read_at"] is not None:
                break
            await asyncio.sleep(0.05)
        assert listed[0]["last_read_at"] is not None
    finally:
        await sock.close()
        await other.close()


# -- the tree a conversation builds ----------------------------------------------------
async def test_follow_ups_regenerate_and_several_models_build_the_tree(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        first = turn_body(sock.sid, "first question")
        chat_id = (await turn(gateway, token, first))["chat_id"]
        await sock.wait_ended(1)
        follow = turn_body(sock.sid, "second question", chat_id=chat_id, parent_id=first["id"])
        assert (await turn(gateway, token, follow))["chat_id"] == chat_id
        await sock.wait_ended(2)
        # Regenerate: the same user message, a new assistant id → a sibling reply only.
        regen = turn_body(
            sock.sid,
            "second question",
            chat_id=chat_id,
            parent_id=first["id"],
            user_message_id=follow["user_message"]["id"],
        )
        await turn(gateway, token, regen)
        await sock.wait_ended(3)
        # Two models answer one question: two tasks, two sibling placeholders.
        multi = turn_body(
            sock.sid,
            "third question",
            chat_id=chat_id,
            parent_id=regen["id"],
            models=["fake-model", "fake-nousage"],
        )
        answer = await turn(gateway, token, multi)
        assert len(answer["task_ids"]) == 2
        await sock.wait_ended(5)
    finally:
        await sock.close()
    chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    history = chat["chat"]["history"]
    messages = history["messages"]
    q1, q2, q3 = (
        first["user_message"]["id"],
        follow["user_message"]["id"],
        multi["user_message"]["id"],
    )
    second_model = multi["message_ids"][1]["message_id"]
    assert messages[q1]["parentId"] is None and messages[q1]["childrenIds"] == [first["id"]]
    assert messages[first["id"]]["childrenIds"] == [q2]
    assert messages[q2]["childrenIds"] == [follow["id"], regen["id"]]
    assert messages[regen["id"]]["childrenIds"] == [q3]
    assert messages[q3]["childrenIds"] == [multi["id"], second_model]
    assert messages[second_model]["model"] == "fake-nousage"
    assert messages[second_model]["modelIdx"] == 1
    assert history["currentId"] == multi["id"]
    assert all(m["done"] for m in messages.values() if m["role"] == "assistant")
    assert len(messages) == 8
    # The model saw the path root → question, not the sibling branch.
    seen = fake_upstream.requests_for("third question")[-1].body["messages"]
    assert [m["content"] for m in seen if m["role"] == "user"] == [
        "first question",
        "second question",
        "third question",
    ]
    assert len([m for m in seen if m["role"] == "assistant"]) == 2
    assert chat["title"] == "first question"


async def test_a_turn_refers_to_messages_that_exist(gateway: GatewayProcess) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        body = turn_body(sock.sid, "x", parent_id="no-such-message")
        await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=400)
        first = turn_body(sock.sid, "first")
        chat_id = (await turn(gateway, token, first))["chat_id"]
        await sock.wait_ended()
        # Answering into the user message is refused, naming it.
        bad = turn_body(
            sock.sid,
            "first",
            chat_id=chat_id,
            user_message_id=first["user_message"]["id"],
            assistant_id=first["user_message"]["id"],
        )
        error = await post_json(f"{gateway.url}/api/chat/completions", token, bad, expect=400)
        assert first["user_message"]["id"] in error["detail"]
        _, bob = user()
        theirs = turn_body(sock.sid, "into alice's chat", chat_id=chat_id, parent_id=first["id"])
        await post_json(f"{gateway.url}/api/chat/completions", bob, theirs, expect=404)
    finally:
        await sock.close()


# -- stop ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["chat", "task"])
async def test_stop_mid_reply_keeps_the_partial_text_and_closes_the_upstream(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, how: str
) -> None:
    _, token = user()
    _, bob = user()
    sock = await PySocket().connect(gateway.url, token)
    question = f"stop me by {how} {uuid.uuid4().hex}"
    try:
        body = turn_body(sock.sid, question, model="fake-slow")
        answer = await turn(gateway, token, body)
        chat_id, (task_id,) = answer["chat_id"], answer["task_ids"]
        # Stored before the answer: another tab (or a reload) sees the turn at once.
        early = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
        placeholder = early["chat"]["history"]["messages"][body["id"]]
        assert placeholder["done"] is False and placeholder["content"] == ""
        assert placeholder["parentId"] == body["user_message"]["id"]
        assert early["chat"]["history"]["currentId"] == body["id"]
        tasks = await get_json(f"{gateway.url}/api/tasks/chat/{chat_id}", token)
        assert tasks == {"task_ids": [task_id]}
        assert await get_json(f"{gateway.url}/api/tasks/chat/{chat_id}", bob) == {"task_ids": []}
        await post_json(f"{gateway.url}/api/tasks/chat/{chat_id}/stop", bob, None, expect=404)
        await post_json(f"{gateway.url}/api/tasks/stop/{task_id}", bob, None, expect=404)
        await sock.wait_until(lambda events: len(text_of(events, body["id"]).split()) >= 5)
        url = (
            f"{gateway.url}/api/tasks/chat/{chat_id}/stop"
            if how == "chat"
            else f"{gateway.url}/api/tasks/stop/{task_id}"
        )
        stopped = await post_json(url, token, None)
        assert stopped["status"] is True
        await sock.wait_ended(timeout_s=5)
    finally:
        await sock.close()
    partial = text_of(sock.events, body["id"])
    full = reply_text("fake-slow", [])
    assert 0 < len(partial) < len(full) and full.startswith(partial)
    completion = completion_of(sock.events, body["id"])
    assert completion["done"] is True and completion["content"] == partial
    assert completion["cancelled"] is True
    kinds = [e["type"] for e in sock.events]
    assert kinds.index("chat:tasks:cancel") < kinds.index("chat:completion")
    chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    stored = chat["chat"]["history"]["messages"][body["id"]]
    assert stored["content"] == partial and stored["done"] is True
    assert await get_json(f"{gateway.url}/api/tasks/chat/{chat_id}", token) == {"task_ids": []}
    (request,) = fake_upstream.requests_for(question)
    assert await asyncio.to_thread(request.ended.wait, 5)
    assert request.disconnected and not request.finished
    # Nothing left to stop: still an answer, not an error.
    again = await post_json(f"{gateway.url}/api/tasks/chat/{chat_id}/stop", token, None)
    assert again == {"status": True, "message": "No tasks found."}


async def test_listing_every_task_is_for_admins(gateway: GatewayProcess) -> None:
    _, token = user()
    await post_json(f"{gateway.url}/api/tasks", token, None, expect=403, method="GET")


# -- failures arrive in the client's protocol -------------------------------------------
@pytest.mark.parametrize(("model", "partial"), [("no-such-model", ""), ("fake-dies", "Fake repl")])
async def test_a_failed_reply_ends_with_error_events_and_is_stored(
    gateway: GatewayProcess, model: str, partial: str
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        body = turn_body(sock.sid, "fail please", model=model)
        answer = await turn(gateway, token, body)
        await sock.wait_ended()
    finally:
        await sock.close()
    kinds = [e["type"] for e in sock.events]
    assert kinds[-3:] == ["chat:message:error", "chat:completion", "chat:active"], kinds
    error = next(e for e in sock.events if e["type"] == "chat:message:error")["data"]["error"]
    assert error["content"]
    if model == "no-such-model":
        assert "no-such-model" in error["content"]
    completion = completion_of(sock.events, body["id"])
    assert completion["done"] is True and completion["error"] == error
    assert completion["content"] == partial
    chat = await get_json(f"{gateway.url}/api/v1/chats/{answer['chat_id']}", token)
    stored = chat["chat"]["history"]["messages"][body["id"]]
    assert stored["done"] is True and stored["content"] == partial
    assert stored["error"]["content"] == error["content"]


async def test_a_dead_session_id_with_a_chat_is_the_backend_controlled_flow(
    gateway: GatewayProcess,
) -> None:
    user_id, token = user()
    sock = await PySocket().connect(gateway.url, token)
    body = turn_body(sock.sid, "first")
    chat_id = (await turn(gateway, token, body))["chat_id"]
    await sock.wait_ended()
    dead_sid = sock.sid
    await sock.close()
    # Dead once the server has seen it go (its seat in /ws/stats gone), not before.
    for _ in range(100):
        stats = await get_json(f"{gateway.url}/ws/stats", token)
        if not stats["details"]["users"].get(user_id):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the closed socket still had its seat after 5 s")
    # A backend script reusing a stale sid: answered as the tutorial's flow (SSE/JSON).
    again = {"chat_id": chat_id, "id": body["id"], "model": "fake-model", "session_id": dead_sid}
    reply = await post_json(f"{gateway.url}/api/chat/completions", token, again)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == reply_text(
        "fake-model", [{"role": "user", "content": "first"}]
    )


async def test_a_turn_sent_while_the_socket_is_down_says_so(gateway: GatewayProcess) -> None:
    """The web app's socket.io-client leaves `session_id` out while it reconnects: the
    turn is refused naming what is missing, not as a pure-API call without
    `messages`; nothing is stored."""
    _, token = user()
    body = turn_body("unused", "sent while reconnecting")
    del body["session_id"]
    error = await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=400)
    assert "'session_id' is missing" in error["detail"], error
    assert "messages" not in error["detail"].split("'session_id'")[0]
    assert await get_json(f"{gateway.url}/api/v1/chats/", token) == []
    # With `messages`, the same fields make a pure-API call, as before.
    body["messages"] = [{"role": "user", "content": "hello"}]
    body["stream"] = False
    reply = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    assert reply["choices"][0]["message"]["content"] == reply_text("fake-model", body["messages"])


async def test_a_temporary_chat_streams_and_is_not_stored(gateway: GatewayProcess) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        body = turn_body(sock.sid, "ignored", chat_id=f"temporary:{sock.sid}")
        body["messages"] = [{"role": "user", "content": "off the record"}]
        answer = await turn(gateway, token, body)
        assert answer["chat_id"] == f"temporary:{sock.sid}"
        await sock.wait_ended()
    finally:
        await sock.close()
    expected = reply_text("fake-model", [{"role": "user", "content": "off the record"}])
    assert_one_whole_reply(sock.events, body["id"], expected)
    assert await get_json(f"{gateway.url}/api/v1/chats/", token) == []


# -- origins and transports ---------------------------------------------------------------
async def test_a_refused_origin_cannot_open_a_socket(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway({"CORS_ALLOW_ORIGIN": "https://chat.example.com"})
    _, token = user()
    polling = f"{gw.url}/ws/socket.io/?EIO=4&transport=polling"
    websocket = f"{gw.url}/ws/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session:
        async with session.get(polling, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
            assert "evil.example" in (await resp.json())["detail"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(websocket, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        async with session.get(polling, headers={"Origin": "https://chat.example.com"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = await PySocket().connect(
        gw.url, token, headers={"Origin": "https://chat.example.com"}
    )
    await allowed.close()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await PySocket().connect(gw.url, token, headers={"Origin": "https://evil.example"})


async def test_websocket_support_off_leaves_polling(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"ENABLE_WEBSOCKET_SUPPORT": "false", "OPENAI_API_BASE_URL": fake_upstream.url}
    )
    _, token = user()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/config") as resp:
            assert (await resp.json())["features"]["enable_websocket"] is False
        # The handshake offers no upgrade (a client would try it, and be refused).
        polled = f"{gw.url}/ws/socket.io/?EIO=4&transport=polling&token={token}"
        async with session.get(polled) as resp:
            opened = json.loads((await resp.text())[1:])
            assert opened["upgrades"] == [], opened
    with pytest.raises(socketio.exceptions.ConnectionError):
        await PySocket().connect(gw.url, token, ["websocket"])
    sock = await JSSocket().start(gw.url, token, transports="polling,websocket")
    try:
        body = turn_body(sock.sid, "polling only")
        await turn(gw, token, body)
        await sock.wait_for("done")
        assert not any(line["kind"] == "upgraded" for line in sock.lines)
        expected = reply_text("fake-model", [{"role": "user", "content": "polling only"}])
        assert_one_whole_reply(sock.events, body["id"], expected)
    finally:
        await sock.close()
