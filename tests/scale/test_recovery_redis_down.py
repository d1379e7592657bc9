"""A replica that starts while Redis is unreachable does not take the other replicas'
running replies for ones a crash left unfinished.

At start-up a replica finalises the replies its store holds unfinished, but for
those a live replica runs (`RunningReplies.recover_unfinished`).  With Redis
down it could not tell which run elsewhere, and took "none" for an answer: a
reply streaming on the other replica was stored as crashed under it (found by
the scale-out probe of 2026-12-07).  It now waits until Redis answers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.clients import PySocket, ended, get_json, post_json, turn_body
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import RedisServer

QUICK_S = 20


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_a_replica_started_while_redis_is_down_leaves_the_others_replies_alone(
    cluster: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    one = cluster("one", redis_url=redis_server.url)
    two = cluster("two", redis_url=redis_server.url)
    token = make_token(f"recover-{uuid.uuid4().hex[:6]}")
    message_id = str(uuid.uuid4())

    async def stored(replica: GatewayProcess) -> dict[str, Any]:
        chat = await get_json(f"{replica.url}/api/v1/chats/{chat_id}", token)
        return dict(chat["chat"]["history"]["messages"][message_id])

    sock = await PySocket().connect(two.url, token)
    try:
        sid = sock.client.get_sid()
        assert sid is not None
        # A model server loading its model (30 s to its first byte): a reply running
        # on two, unfinished in the store, all along.
        body = turn_body(sid, "go", model="fake-loading", assistant_id=message_id)
        answer = await post_json(f"{two.url}/api/chat/completions", token, body)
        chat_id = answer["chat_id"]

        # Replica one restarts while Redis is down: it cannot tell what runs on two.
        await asyncio.to_thread(one.stop)
        redis_server.stop()
        await asyncio.to_thread(one.start)
        assert "replies left unfinished by a crash not finalised yet" in one.log()
        during = await stored(two)
        assert during["done"] is False and "error" not in during, during

        # Redis back, empty (as after a restart): one finalises what no replica runs
        # only once two has reconnected and written its running reply back.
        await asyncio.to_thread(redis_server.start)
        deadline = time.monotonic() + QUICK_S
        while "Redis answers again: finalising the replies no replica runs" not in one.log():
            assert time.monotonic() < deadline, one.log()[-2000:]
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        after = await stored(one)
        assert after["done"] is False and "error" not in after, after
        assert "finalised replies left unfinished by a crash" not in one.log()

        # The reply is still two's: stopped (from either replica), it ends as stopped.
        await post_json(f"{one.url}/api/tasks/chat/{chat_id}/stop", token, None)
        while not any(ended(e) for e in sock.events if e["message_id"] == message_id):
            assert time.monotonic() < deadline + QUICK_S
            await asyncio.sleep(0.05)
    finally:
        await sock.close()
    end = await stored(one)
    assert end["done"] is True and "The gateway stopped" not in json.dumps(end), end
