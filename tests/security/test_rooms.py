"""Rooms and sessions belong to their users (SECURITY.md, "Rooms and sessions").

Issue 13, hole 1: user B read user A's Nadoo session id from `/ws/stats`, opened
`/ws/chat/<A's session>` with B's own token, and received A's whole live reply.
The attack as described, with real clients on loopback, on one replica and across
two replicas on Redis; then the same question asked of every other kind of room.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.clients import PySocket, get_json, post_json
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import fresh_pg_database

# Long enough for an event to cross Redis between two replicas (milliseconds on loopback).
QUIET_S = 1.0
END = {"code": 0, "message": "", "data": True}

Pair = tuple[GatewayProcess, GatewayProcess]


@pytest.fixture(params=["one-replica", "two-replicas"])
async def pair(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[Pair]:
    """(where A connects, where B connects): one gateway, or two replicas sharing Redis
    and PostgreSQL as in tests/scale/test_replicas.py."""
    if request.param == "one-replica":
        gateway: GatewayProcess = request.getfixturevalue("gateway")
        yield gateway, gateway
        return
    async with fresh_pg_database() as database_url:
        env = {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "WEBSOCKET_MANAGER": "redis",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "GATEWAY_REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
            "DATABASE_URL": database_url,
        }
        started: list[GatewayProcess] = []
        try:
            for name in ("a", "b"):
                started.append(GatewayProcess(tmp_path / name, env).start())
            yield started[0], started[1]
        finally:
            for proc in started:
                proc.stop()


def user(name: str) -> tuple[str, str]:
    user_id = f"{name}-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


def chat_url(gateway: GatewayProcess, session: str, token: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws/chat/{session}?token={token}"


def expected(question: str, model: str = "fake-model") -> str:
    return reply_text(model, [{"role": "user", "content": question}])


async def recv(ws: Any, timeout_s: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return frame


async def until(ws: Any, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Frames until one of `kind` (returned first), and everything before it."""
    seen = []
    while (frame := await recv(ws))["type"] != kind:
        seen.append(frame)
    return frame, seen


async def quiet(ws: Any, seconds: float = QUIET_S) -> list[dict[str, Any]]:
    """Whatever arrives within `seconds`: where nothing may arrive, []."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return frames


async def stats_counting_someone(gateway: GatewayProcess, token: str) -> dict[str, Any]:
    """B's `/ws/stats`, once it counts a connection (other replicas' arrive with their
    heartbeat, about a second)."""
    for _ in range(60):
        stats: dict[str, Any] = await get_json(f"{gateway.url}/ws/stats", token)
        if stats["total_connections"] >= 1:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"no connection counted: {stats}")


# -- Nadoo chat sessions ---------------------------------------------------------------
async def test_another_user_opening_the_same_session_id_gets_nothing_of_the_owners(
    pair: Pair,
) -> None:
    on_a, on_b = pair
    alice_id, alice = user("alice")
    bob_id, bob = user("bob")
    session = f"s-{uuid.uuid4().hex[:8]}"
    question = f"alice's secret {uuid.uuid4().hex}"
    async with websockets.connect(chat_url(on_a, session, alice)) as a:
        assert (await recv(a))["type"] == "connected"
        # Step 1 of the attack: Bob reads the stats. They count Alice, and name nothing of hers.
        stats = await stats_counting_someone(on_b, bob)
        assert session not in json.dumps(stats) and alice_id not in json.dumps(stats)
        assert stats["details"] == {"sessions": {}, "users": {}}
        # Step 2: Bob connects to Alice's session id anyway (a guess, a leaked link).
        async with websockets.connect(chat_url(on_b, session, bob)) as b:
            hello = await recv(b)
            assert (hello["type"], hello["session_id"], hello["user_id"]) == (
                "connected",
                session,
                bob_id,
            )
            await b.send(json.dumps({"type": "typing"}))
            # Step 3: Alice asks; her reply is hers alone.
            await a.send(json.dumps({"type": "chat", "content": question}))
            alice_end, alice_frames = await until(a, "response_end")
            assert alice_end["full_response"] == expected(question)
            # Bob's session of that id is his own: his question, his chat, his reply only.
            await b.send(json.dumps({"type": "chat", "content": "bob's own question"}))
            bob_end, bob_frames = await until(b, "response_end")
            bob_frames += [bob_end, *await quiet(b)]
            start, *deltas, end = bob_frames
            assert start["type"] == "response_start" and end == bob_end
            assert start["chat_id"] == bob_end["chat_id"] != alice_end["chat_id"]
            assert {f["type"] for f in deltas} == {"text-delta"}
            text = "".join(f["text"] for f in deltas)
            assert text == bob_end["full_response"] == expected("bob's own question")
            seen_by_bob = json.dumps(bob_frames)
            for secret in (alice_end["chat_id"], alice_end["full_response"], alice_id):
                assert secret not in seen_by_bob
            # And his stats show his own session and entry, nothing of Alice's.
            mine = await get_json(f"{on_b.url}/ws/stats", bob)
            assert mine["details"] == {"sessions": {session: 1}, "users": {bob_id: 1}}
            assert alice_id not in json.dumps(mine)
        # Alice saw nothing of Bob: no typing, not his reply, not his leaving.
        alice_frames += await quiet(a)
    assert [f["type"] for f in alice_frames if f["type"] != "text-delta"] == ["response_start"]
    assert bob_id not in json.dumps(alice_frames)


async def test_another_user_cannot_cancel_the_owners_reply_through_the_session_id(
    pair: Pair,
) -> None:
    on_a, on_b = pair
    _, alice = user("alice")
    _, bob = user("bob")
    session = f"s-{uuid.uuid4().hex[:8]}"
    question = f"keep going {uuid.uuid4().hex}"
    async with (
        websockets.connect(chat_url(on_a, session, alice)) as a,
        websockets.connect(chat_url(on_b, session, bob)) as b,
    ):
        await recv(a)
        await recv(b)
        ask = {"type": "chat", "content": question, "application_id": "fake-slow"}
        await a.send(json.dumps(ask))
        while (await recv(a))["type"] != "text-delta":
            pass
        # Frames are handled in order: the pong comes once Bob's stop has been carried out.
        await b.send(json.dumps({"type": "cancel"}))
        await b.send(json.dumps({"type": "ping"}))
        _, before = await until(b, "pong")
        end, _ = await until(a, "response_end")
        after = await quiet(b)
    assert before == [] and after == []
    assert "cancelled" not in end
    # Trimmed, as Open WebUI trims a reply (fake-slow's text ends in a space).
    assert end["full_response"] == expected(question, "fake-slow").strip()


# -- RAGFlow sessions ------------------------------------------------------------------------
async def ragflow_user(gateway: GatewayProcess) -> tuple[str, str, str]:
    """A user's JWT, RAGFlow key and one assistant of theirs."""
    jwt_token = make_token(f"rag-{uuid.uuid4().hex[:10]}")
    made = await post_json(f"{gateway.url}/ragflow/v1/system/new_token", jwt_token, None)
    key = made["data"]["token"]
    created = await post_json(f"{gateway.url}/ragflow/api/v1/chats", key, {"name": "bot"})
    return jwt_token, key, created["data"]["id"]


async def ragflow_answer(ws: Any) -> list[dict[str, Any]]:
    chunks = []
    while (frame := await recv(ws)) != END:
        assert frame["code"] == 0, frame
        chunks.append(frame)
    return chunks


async def test_another_users_ragflow_session_is_refused_102_on_the_websocket(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    alice_jwt, alice_key, alice_bot = await ragflow_user(gateway)
    _, bob_key, bob_bot = await ragflow_user(gateway)
    socket = f"ws://127.0.0.1:{gateway.port}/v1/ws/chat?token="
    path_variant = f"ws://127.0.0.1:{gateway.port}/api/v1/ws/chats/{bob_bot}/completions?token="
    intrusion = f"intrusion {uuid.uuid4().hex}"
    async with (
        websockets.connect(socket + alice_key) as asking,
        websockets.connect(socket + alice_key) as alices_other,
        websockets.connect(socket + bob_key) as bobs,
        websockets.connect(path_variant + bob_key) as bobs_path,
    ):
        await asking.send(json.dumps({"type": "chat", "chat_id": alice_bot, "question": "first"}))
        session = (await ragflow_answer(asking))[0]["data"]["session_id"]
        # Alice asks again while Bob names her session: through her assistant, through his.
        follow = {"type": "chat", "chat_id": alice_bot, "session_id": session}
        await asking.send(json.dumps({**follow, "question": "second"}))
        for chat_id in (alice_bot, bob_bot):
            frame = {"type": "chat", "chat_id": chat_id, "session_id": session}
            await bobs.send(json.dumps({**frame, "question": intrusion}))
        await bobs_path.send(json.dumps({"question": intrusion, "session_id": session}))
        chunks = await ragflow_answer(asking)
        refusals = [await recv(bobs), await recv(bobs), await recv(bobs_path)]
        # The answer went to the asking socket only.
        leftovers = [*await quiet(bobs), *await quiet(bobs_path), *await quiet(alices_other)]
    assert "".join(c["data"]["answer"] for c in chunks) == expected("second")
    assert [r["code"] for r in refusals] == [102, 102, 102], refusals
    assert leftovers == []
    assert "second" not in json.dumps(refusals)
    assert fake_upstream.requests_for(intrusion) == []
    chat = await get_json(f"{gateway.url}/api/v1/chats/{session}", alice_jwt)
    asked = [m["content"] for m in chat["chat"]["messages"] if m["role"] == "user"]
    assert asked == ["first", "second"]


@pytest.mark.parametrize("stream", [True, False])
async def test_another_users_ragflow_session_is_refused_102_over_http(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, stream: bool
) -> None:
    alice_jwt, alice_key, alice_bot = await ragflow_user(gateway)
    _, bob_key, bob_bot = await ragflow_user(gateway)
    made = await post_json(
        f"{gateway.url}/ragflow/api/v1/chats/{alice_bot}/sessions", alice_key, {"name": "mine"}
    )
    session = made["data"]["id"]
    intrusion = f"intrusion {uuid.uuid4().hex}"
    for chat_id in (alice_bot, bob_bot):
        body = {"question": intrusion, "session_id": session, "stream": stream}
        url = f"{gateway.url}/ragflow/api/v1/chats/{chat_id}/completions"
        refused = await post_json(url, bob_key, body)
        assert refused["code"] == 102 and not refused.get("data"), refused
        assert "mine" not in json.dumps(refused)
    assert fake_upstream.requests_for(intrusion) == []
    chat = await get_json(f"{gateway.url}/api/v1/chats/{session}", alice_jwt)
    assert [m for m in chat["chat"]["messages"] if m["role"] == "user"] == []


# -- Nadoo notifications ---------------------------------------------------------------------
async def test_another_users_notifications_are_closed_1008(gateway: GatewayProcess) -> None:
    alice_id, alice = user("alice")
    bob_id, bob = user("bob")
    base = f"ws://127.0.0.1:{gateway.port}"
    for prefix in ("", "/api"):
        url = f"{base}{prefix}/ws/notifications/{alice_id}?token={bob}"
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Alice's notification reaches her socket, and not Bob's own.
    async with (
        websockets.connect(f"{base}/ws/notifications/{alice_id}?token={alice}") as hers,
        websockets.connect(f"{base}/ws/notifications/{bob_id}?token={bob}") as his,
    ):
        history = {
            "currentId": "a1",
            "messages": {
                "u1": {"id": "u1", "role": "user", "content": "while away"},
                "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": ""},
            },
        }
        chat = await post_json(
            f"{gateway.url}/api/v1/chats/new", alice, {"chat": {"title": "t", "history": history}}
        )
        body = {"chat_id": chat["id"], "id": "a1", "model": "fake-model"}
        await post_json(f"{gateway.url}/api/chat/completions", alice, body)
        note = await recv(hers)
        assert note["type"] == "notification"
        assert await quiet(his) == []


# -- Socket.IO -------------------------------------------------------------------------------
async def test_no_socketio_event_joins_another_users_room(gateway: GatewayProcess) -> None:
    alice_id, alice = user("alice")
    bob_id, bob = user("bob")
    session = f"s-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(chat_url(gateway, session, alice)) as a:
        await recv(a)
        await a.send(json.dumps({"type": "chat", "content": "first"}))
        alice_chat = (await until(a, "response_end"))[0]["chat_id"]
        snoop = await PySocket().connect(gateway.url, bob)
        try:
            client = snoop.client
            # Everything a client can say that names a room or a user.
            join = {"chat_id": alice_chat, "data": {"type": "join"}}
            assert not await client.call("events:chat", join, timeout=10)
            joined = await client.call(
                "user-join", {"auth": {"token": bob}, "user": {"id": alice_id}}, timeout=10
            )
            assert joined["id"] == bob_id
            for event in ("join", "enter_room", "subscribe", "join-room"):
                await client.emit(event, {"room": f"user:{alice_id}", "chat_id": alice_chat})
            await a.send(json.dumps({"type": "chat", "content": "second", "chat_id": alice_chat}))
            await until(a, "response_end")
            # Bob's own reply after Alice's: his socket works, and got his only.
            async with websockets.connect(chat_url(gateway, f"{session}-bob", bob)) as b:
                await recv(b)
                await b.send(json.dumps({"type": "chat", "content": "bob's"}))
                bob_chat = (await until(b, "response_end"))[0]["chat_id"]
            await snoop.wait_ended()
            await asyncio.sleep(QUIET_S)
        finally:
            await snoop.close()
    assert {e["chat_id"] for e in snoop.events} == {bob_chat}
