"""A chat's edits, one at a time across replicas.

An edit reads a chat's tree, merges the change and writes it.  Two at once,
each on its own replica, would each write what the other did not see: two
siblings moved under each other at once stored a parentId cycle, and of a
text and a rating sent at once one was lost.  On one replica a lock per chat
makes them one after the other (`tests/api/test_probed_rest.py`); with
replicas on Redis the lock is Redis's (`bus/locks.py`), so the same holds when
each edit reaches another replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.api.test_probed_rest import CHATS, assert_a_tree, call, message, new_chat, new_user
from tests.clients import get_json
from tests.gatewayproc import GatewayProcess


async def test_two_siblings_moved_under_each_other_on_two_replicas_store_no_cycle(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one, two = cluster("one"), cluster("two")
    token = new_user("replica-moves")
    for _ in range(12):
        chat_id = await new_chat(
            one, token, [message("r", None, "q"), message("a", "r"), message("b", "r")], "a"
        )
        a_under_b, b_under_a = await asyncio.gather(
            call("POST", f"{one.url}{CHATS}/{chat_id}/messages/a", token, {"parentId": "b"}),
            call("POST", f"{two.url}{CHATS}/{chat_id}/messages/b", token, {"parentId": "a"}),
        )
        # One move is made; the other would close a cycle with it and is refused.
        assert sorted([a_under_b.status, b_under_a.status]) == [200, 400], (a_under_b, b_under_a)
        refused = a_under_b if a_under_b.status == 400 else b_under_a
        assert "cycle" in refused.body["detail"]
        for replica in (one, two):
            chat = await get_json(f"{replica.url}{CHATS}/{chat_id}", token)
            parents = {mid: m["parentId"] for mid, m in chat["chat"]["history"]["messages"].items()}
            assert parents in ({"r": None, "a": "b", "b": "r"}, {"r": None, "a": "r", "b": "a"})
            assert_a_tree(chat)


async def test_a_text_and_a_rating_sent_to_two_replicas_at_once_are_both_kept(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one, two = cluster("one"), cluster("two")
    token = new_user("replica-fields")
    for round_ in range(12):
        chat_id = await new_chat(
            one, token, [message("q", None, "question"), message("x", "q", "old")], "x"
        )
        text = f"NEW {round_}"
        edits = await asyncio.gather(
            call("POST", f"{one.url}{CHATS}/{chat_id}/messages/x", token, {"content": text}),
            call(
                "POST",
                f"{two.url}{CHATS}/{chat_id}/messages/x",
                token,
                {"annotation": {"rating": 1}},
            ),
        )
        assert [edit.status for edit in edits] == [200, 200], edits
        stored = (await get_json(f"{two.url}{CHATS}/{chat_id}", token))["chat"]["history"]
        x = stored["messages"]["x"]
        assert (x["content"], x.get("annotation")) == (text, {"rating": 1})
