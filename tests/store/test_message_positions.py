"""A long chat saves in linear time: each message's position is found through the
`(chat_id, position)` index, not by reading every message of the chat (issue 18:
a chat of 20,000 messages took 28.5 s on SQLite, and other users' writes waited)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from gateway.store import open_store
from gateway.store.records import ChatRecord, MessageRecord
from gateway.store.sql.messages import upserts
from tests.services import fresh_pg_database

COUNT = 20_000


def chat_of(count: int) -> tuple[ChatRecord, list[MessageRecord]]:
    chat = ChatRecord("long", "u1", "Long", f"m{count - 1}", 1, 1)
    messages = [
        MessageRecord("long", f"m{i}", f"m{i - 1}" if i else None, "user", f"message {i}")
        for i in range(count)
    ]
    return chat, messages


async def test_sqlite_finds_a_new_messages_position_through_the_index(tmp_path: Path) -> None:
    store = await open_store("", tmp_path)
    try:
        sql, _ = upserts("c1", [MessageRecord("c1", "m1", None, "user", "hi")])[0]
        subquery = sql[sql.index("(SELECT") + 1 : sql.index("))")]
        db = store.db  # type: ignore[attr-defined]
        plan = await db.fetch(f"EXPLAIN QUERY PLAN {subquery}", ("c1",))
        details = " ".join(str(row[-1]) for row in plan)
        assert "messages_chat_position" in details, details
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_chat_of_twenty_thousand_messages_is_stored_whole_and_in_order(
    kind: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_pg_database()) if kind == "postgresql" else ""
        store = await open_store(url, tmp_path)
        stack.push_async_callback(store.close)
        chat, messages = chat_of(COUNT)
        await store.insert_chat(chat, messages)
        stored = await store.get_messages(chat.id)
        assert [m.id for m in stored] == [m.id for m in messages]
        assert [m.position for m in stored] == list(range(COUNT))
