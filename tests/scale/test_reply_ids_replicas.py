"""One reply id in one chat of a user at a time, across replicas.

Message ids are the clients' (the README's own example answers into "a1"), and a
user's running replies are followed by id alone (the replay buffer, a resume, a
chat's stream route).  Two at once under one id in two chats, each started on
its own replica, were one reply to every follower of either: the first chat's
stream carried the second's text.  The claim on Redis now holds the id for the
user too (`bus/claims.py`), so the second is refused (409) on any replica while
the first runs, and takes the id once it has ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable

import aiohttp

from tests.clients import PySocket, ended, post_json, turn_body
from tests.gatewayproc import GatewayProcess, make_token


async def test_one_reply_id_runs_in_one_chat_of_a_user_at_a_time_across_replicas(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one, two = cluster("one"), cluster("two")
    token = make_token(f"ids-{os.urandom(3).hex()}")
    on_one, on_two = (
        await PySocket().connect(one.url, token),
        await PySocket().connect(two.url, token),
    )
    try:
        message_id = f"a1-{os.urandom(3).hex()}"
        sid_one, sid_two = on_one.client.get_sid(), on_two.client.get_sid()
        assert sid_one is not None and sid_two is not None
        first = turn_body(sid_one, "one", model="fake-slow", assistant_id=message_id)
        await post_json(f"{one.url}/api/chat/completions", token, first)
        second = turn_body(sid_two, "two", model="fake-model", assistant_id=message_id)
        refused = await post_json(f"{two.url}/api/chat/completions", token, second, 409)
        assert f"message '{message_id}' is already running on another replica" in json.dumps(
            refused
        ), refused
        # Once the first has ended, the id is free again, on the other replica too.
        deadline = time.monotonic() + 30
        while not any(ended(e) for e in on_one.events if e["message_id"] == message_id):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            while True:  # (its let-go reaches Redis a moment after its end goes out)
                async with http.post(
                    f"{two.url}/api/chat/completions", json=second, headers=headers
                ) as resp:
                    status, answer = resp.status, await resp.json()
                if status != 409:
                    break
                assert time.monotonic() < deadline, answer
                await asyncio.sleep(0.05)
        assert (status, answer.get("status")) == (200, True), answer
    finally:
        await on_one.close()
        await on_two.close()
