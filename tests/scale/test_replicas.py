"""Several replicas on one Redis and one PostgreSQL, as processes on loopback.

Each test gets a fresh database and its own Redis key prefix on the machine's
Redis (or a Redis server of its own where it kills it)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import websockets

from tests.clients import PySocket, ended, get_json, post_json, text_of, turn_body
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import RedisServer

Start = Callable[..., GatewayProcess]


@asynccontextmanager
async def connected(url: str, token: str) -> AsyncIterator[PySocket]:
    sock = await PySocket().connect(url, token)
    try:
        yield sock
    finally:
        await sock.close()


def user() -> tuple[str, str]:
    user_id = f"scale-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


async def turn(replica: GatewayProcess, token: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await post_json(f"{replica.url}/api/chat/completions", token, body)
    return answer


def expected(question: str, model: str = "fake-model") -> str:
    return reply_text(model, [{"role": "user", "content": question}])


# -- delivery across replicas ------------------------------------------------------------
async def test_a_reply_run_on_b_reaches_a_socket_on_a_whole_and_in_order(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    sock = await PySocket().connect(a.url, token)
    try:
        body = turn_body(sock.sid, "across replicas")
        await turn(b, token, body)  # the POST, and so the reply, on B
        events = await sock.wait_ended()
    finally:
        await sock.close()
    kinds = [e["type"] for e in events]
    assert kinds[0] == "chat:active" and kinds[-1] == "chat:active"
    assert kinds.index("chat:completion") == len(kinds) - 3
    assert text_of(events, body["id"]) == expected("across replicas")
    # In order: the deltas rebuild the text as sent, the completion carries it whole.
    completion = next(e for e in events if e["type"] == "chat:completion")
    assert completion["data"]["content"] == expected("across replicas")


async def test_one_reply_at_a_time_into_a_message_across_replicas(cluster: Start) -> None:
    """Two backend-controlled replies into one message, one asked of A and one of B at
    once (a client's retry that the balancer sent elsewhere): one runs, the other is
    refused (409) and writes nothing; the stored answer is the one that ran, whole;
    once it has ended, the message is answered again through either replica."""
    a, b = cluster("a"), cluster("b")
    _, token = user()
    async with connected(a.url, token) as sock:
        body = turn_body(sock.sid, "one at a time across replicas")
        chat_id = (await turn(a, token, body))["chat_id"]
        await sock.wait_ended()
    slow = {"chat_id": chat_id, "id": body["id"], "model": "fake-slow", "stream": False}

    async def asked(replica: GatewayProcess) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{replica.url}/api/chat/completions"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=slow, headers=headers) as resp:
                return resp.status, await resp.json()

    first, second = await asyncio.gather(asked(a), asked(b))
    assert sorted([first[0], second[0]]) == [200, 409], (first, second)
    ran, refused = (first, second) if first[0] == 200 else (second, first)
    assert "already running" in refused[1]["detail"]
    answer = ran[1]["choices"][0]["message"]["content"]
    assert answer == expected("", "fake-slow").strip()  # (stored trimmed, as Open WebUI)
    stored = await get_json(f"{b.url}/api/v1/chats/{chat_id}", token)
    assert stored["chat"]["history"]["messages"][body["id"]]["content"] == answer
    for replica in (a, b):  # free again, on both
        assert (await asked(replica))[0] == 200


async def test_nadoo_members_on_two_replicas_share_a_session(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    user_id, token = user()
    session = f"s-{uuid.uuid4().hex[:6]}"
    async with (
        websockets.connect(f"ws://127.0.0.1:{a.port}/ws/chat/{session}?token={token}") as on_a,
        websockets.connect(f"ws://127.0.0.1:{b.port}/ws/chat/{session}?token={token}") as on_b,
    ):
        await on_a.recv()
        await on_b.recv()
        await on_b.send(json.dumps({"type": "typing"}))
        assert json.loads(await on_a.recv()) | {"timestamp": ""} == {
            "type": "typing",
            "user_id": user_id,
            "timestamp": "",
        }
        await on_b.send(json.dumps({"type": "chat", "content": "from b"}))
        frames = []
        while (frame := json.loads(await asyncio.wait_for(on_a.recv(), 10)))["type"] != (
            "response_end"
        ):
            frames.append(frame)
    deltas = [f for f in frames if f["type"] == "text-delta"]
    assert frames[0]["type"] == "response_start"
    assert [f["index"] for f in deltas] == list(range(len(deltas)))
    assert "".join(f["text"] for f in deltas) == frame["full_response"] == expected("from b")


async def test_a_ragflow_socket_on_a_is_seen_live_by_a_tab_on_b(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    key = (await post_json(f"{a.url}/ragflow/v1/system/new_token", token, None))["data"]["token"]
    made = await post_json(f"{a.url}/ragflow/api/v1/chats", key, {"name": "bot"})
    tab = await PySocket().connect(b.url, token)
    try:
        url = f"ws://127.0.0.1:{a.port}/v1/ws/chat?token={key}"
        async with websockets.connect(url) as ws:
            question = {"type": "chat", "chat_id": made["data"]["id"], "question": "wechat?"}
            await ws.send(json.dumps(question))
            answer = ""
            while (frame := json.loads(await ws.recv()))["data"] is not True:
                answer += frame["data"]["answer"]
        await tab.wait_ended()
    finally:
        await tab.close()
    assert answer == expected("wechat?")
    (message_id,) = {e["message_id"] for e in tab.events}
    assert text_of(tab.events, message_id) == expected("wechat?")


async def test_ws_stats_count_every_replica(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    user_id, token = user()
    async with (
        websockets.connect(f"ws://127.0.0.1:{a.port}/ws/chat/s1?token={token}") as one,
        websockets.connect(f"ws://127.0.0.1:{b.port}/ws/chat/s1?token={token}") as two,
    ):
        await one.recv()
        await two.recv()
        for _ in range(60):  # presence is shared with each heartbeat (1 s)
            stats = await get_json(f"{a.url}/ws/stats", token)
            if stats["total_connections"] == 2:
                break
            await asyncio.sleep(0.1)
        assert stats["total_connections"] == 2
        assert stats["details"]["sessions"] == {"s1": 2}
        assert stats["details"]["users"] == {user_id: 2}


# -- stop, wherever the reply runs ----------------------------------------------------------
async def test_stop_sent_to_a_cancels_a_reply_running_on_b_within_a_second(
    cluster: Start, fake_upstream: FakeUpstream
) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    sock = await PySocket().connect(a.url, token)
    question = f"long {uuid.uuid4().hex}"
    try:
        body = turn_body(sock.sid, question, model="fake-slow")
        answer = await turn(b, token, body)
        await sock.wait_until(lambda events: len(text_of(events, body["id"]).split()) >= 3)
        listed = await get_json(f"{a.url}/api/tasks/chat/{answer['chat_id']}", token)
        assert listed == {"task_ids": answer["task_ids"]}
        began = time.monotonic()
        stopped = await post_json(f"{a.url}/api/tasks/chat/{answer['chat_id']}/stop", token, None)
        await sock.wait_ended(timeout_s=1)
        took = time.monotonic() - began
    finally:
        await sock.close()
    assert stopped == {"status": True, "message": "Stopped 1 task(s)."}
    assert took < 1.0
    completion = next(e for e in sock.events if e["type"] == "chat:completion")
    assert completion["data"]["cancelled"] is True
    (request,) = fake_upstream.requests_for(question)
    assert await asyncio.to_thread(request.ended.wait, 5) and request.disconnected


async def test_nadoo_cancel_on_a_stops_the_sessions_reply_on_b(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    session = f"s-{uuid.uuid4().hex[:6]}"
    async with (
        websockets.connect(f"ws://127.0.0.1:{a.port}/ws/chat/{session}?token={token}") as on_a,
        websockets.connect(f"ws://127.0.0.1:{b.port}/ws/chat/{session}?token={token}") as on_b,
    ):
        await on_a.recv()
        await on_b.recv()
        ask = {"type": "chat", "content": "stop me", "application_id": "fake-slow"}
        await on_b.send(json.dumps(ask))
        while json.loads(await on_a.recv())["type"] != "text-delta":
            pass
        began = time.monotonic()
        await on_a.send(json.dumps({"type": "cancel"}))
        while (frame := json.loads(await asyncio.wait_for(on_a.recv(), 2)))["type"] != (
            "response_end"
        ):
            pass
    assert frame["cancelled"] is True and time.monotonic() - began < 1.0


# -- Redis goes away and comes back ---------------------------------------------------------
async def test_redis_outage_not_ready_meanwhile_then_delivery_resumes(cluster: Start) -> None:
    redis_server = RedisServer().start()
    async with AsyncExitStack() as stack:
        stack.callback(redis_server.stop)
        a, b = cluster("a", redis_url=redis_server.url), cluster("b", redis_url=redis_server.url)
        _, token = user()
        sock = await stack.enter_async_context(connected(a.url, token))
        first = turn_body(sock.sid, "before the outage")
        answer = await turn(b, token, first)
        await sock.wait_ended()

        redis_server.stop()
        for replica in (a, b):
            ready = await _until(lambda r=replica: get_json(f"{r.url}/ready", None, expect=503))
            assert ready["checks"]["bus"] == "failed"  # what failed: an admin's /ready
        # Meanwhile replies still run and are stored (on B: its own database writes).
        during = turn_body(
            sock.sid, "during the outage", chat_id=answer["chat_id"], parent_id=first["id"]
        )
        await turn(b, token, during)
        stored = await _until(
            lambda: _answer_if_done(b, token, answer["chat_id"], during["id"]), timeout_s=10
        )
        assert stored == expected("during the outage")

        redis_server.start()
        for replica in (a, b):
            await _until(lambda r=replica: get_json(f"{r.url}/ready", None), timeout_s=15)
        after = turn_body(
            sock.sid, "after the outage", chat_id=answer["chat_id"], parent_id=during["id"]
        )
        await turn(b, token, after)
        await sock.wait_until(
            lambda events: any(ended(e) and e["message_id"] == after["id"] for e in events)
        )
        assert text_of(sock.events, after["id"]) == expected("after the outage")
        assert "bus listener lost Redis" in a.log() and "bus reconnected" in a.log()


async def _answer_if_done(replica: GatewayProcess, token: str, chat_id: str, mid: str) -> str:
    chat = await get_json(f"{replica.url}/api/v1/chats/{chat_id}", token)
    message = chat["chat"]["history"]["messages"][mid]
    assert message["done"] is True
    return str(message["content"])


async def _until(check: Callable[[], Any], timeout_s: float = 8) -> Any:
    """The first result of `check()` that does not raise AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- a replica dies mid-reply ------------------------------------------------------------------
async def test_a_replica_killed_mid_reply_ends_cleanly_for_the_others(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    sock = await PySocket().connect(a.url, token)
    try:
        body = turn_body(sock.sid, "doomed", model="fake-slow")
        answer = await turn(b, token, body)
        # Past a checkpoint (every 0.2 s here), then B dies without a word.
        await sock.wait_until(lambda events: len(text_of(events, body["id"]).split()) >= 25)
        b.kill()
        events = await sock.wait_ended(timeout_s=20)
    finally:
        await sock.close()
    kinds = [e["type"] for e in events if e["message_id"] == body["id"]]
    assert kinds[-3:] == ["chat:message:error", "chat:completion", "chat:active"]
    error = next(e for e in events if e["type"] == "chat:message:error")
    assert "replica" in error["data"]["error"]["content"]
    chat = await get_json(f"{a.url}/api/v1/chats/{answer['chat_id']}", token)
    stored = chat["chat"]["history"]["messages"][body["id"]]
    streamed = text_of(events, body["id"])
    assert stored["done"] is True and stored["error"]["content"]
    # The text up to the last checkpoint: a prefix of what streamed, and not empty.
    assert stored["content"] and streamed.startswith(stored["content"])
    assert "replica" in a.log()


async def test_a_dead_replica_leaves_no_presence_or_sessions_behind(cluster: Start) -> None:
    """A replica killed with a socket open: a survivor removes its presence entry and
    its Engine.IO session registry, which would otherwise stay in Redis forever."""
    b = cluster("b")
    prefix = b.env["GATEWAY_REDIS_KEY_PREFIX"]
    client = aioredis.Redis(decode_responses=True)
    try:
        _, token = user()
        sock = await PySocket().connect(b.url, token)
        (b_id,) = await _until(lambda: _replicas_with_sessions(client, prefix))
        cluster("a")
        b.kill()
        await sock.close()
        await _until(lambda: _gone(client, prefix, b_id), timeout_s=20)
    finally:
        await client.aclose()


async def _replicas_with_sessions(client: aioredis.Redis, prefix: str) -> list[str]:
    keys = [key async for key in client.scan_iter(f"{prefix}sessions:*")]
    assert keys
    return [key.removeprefix(f"{prefix}sessions:") for key in keys]


async def _gone(client: aioredis.Redis, prefix: str, replica: str) -> bool:
    assert not await client.exists(f"{prefix}sessions:{replica}")
    assert not await client.hexists(f"{prefix}presence", replica)
    return True


async def test_a_new_replica_does_not_finish_a_reply_still_running_elsewhere(
    cluster: Start,
) -> None:
    a = cluster("a")
    _, token = user()
    sock = await PySocket().connect(a.url, token)
    try:
        body = turn_body(sock.sid, "keep going", model="fake-slow")
        answer = await turn(a, token, body)
        await sock.wait_until(lambda events: len(text_of(events, body["id"]).split()) >= 3)
        cluster("c")  # starts and recovers unfinished replies: not this one
        await sock.wait_ended()
    finally:
        await sock.close()
    chat = await get_json(f"{a.url}/api/v1/chats/{answer['chat_id']}", token)
    stored = chat["chat"]["history"]["messages"][body["id"]]
    # Trimmed, as Open WebUI trims a reply (fake-slow's text ends in a space).
    assert stored["content"] == reply_text("fake-slow", []).strip() and "error" not in stored


# -- one huge event does not break pub/sub ---------------------------------------------------
async def test_huge_events_cross_replicas_split_or_by_reference(cluster: Start) -> None:
    # A bus message of at most 4 KiB: every 5,000-character delta must be cut,
    # and the finished reply (1 MB) must go by reference to the stored text.
    small = {"GATEWAY_BUS_MAX_MESSAGE_BYTES": "4096"}
    a, b = cluster("a", extra=small), cluster("b", extra=small)
    _, token = user()
    sock = await PySocket().connect(a.url, token)
    try:
        body = turn_body(sock.sid, "flood", model="fake-flood")
        body["params"] = {"max_tokens": 200}
        await turn(b, token, body)
        await sock.wait_ended(timeout_s=60)
        after = turn_body(sock.sid, "still there?")
        await turn(b, token, after)
        await sock.wait_ended(2, timeout_s=20)
    finally:
        await sock.close()
    whole = reply_text("fake-flood", [])[:1_000_000]
    assert text_of(sock.events, body["id"]) == whole
    pieces = [
        e
        for e in sock.events
        if e["type"] == "chat:message:delta" and e["message_id"] == body["id"]
    ]
    # Each 5,000-character delta crossed Redis cut in pieces, put together again on
    # the socket's replica: one event a seq, none twice (a slow socket is followed
    # from the replay buffer after the last seq it had; pieces of one seq delivered
    # apart came again).
    seqs = [e["seq"] for e in pieces if e.get("seq") is not None]
    assert len(seqs) == len(set(seqs))
    assert 0 < len(pieces) <= 200
    completion = next(
        e for e in sock.events if e["type"] == "chat:completion" and e["message_id"] == body["id"]
    )
    assert completion["data"]["content"] == whole
    assert text_of(sock.events, after["id"]) == expected("still there?")
