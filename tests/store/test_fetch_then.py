"""`Driver.fetch_then`: a read and the read it decides are one call: one job for
SQLite's thread, one PostgreSQL connection; a second read not named is not made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import ChatRecord, MessageRecord, open_store
from gateway.store.drivers import PostgresDriver, Row, SQLiteDriver, Statement
from tests.services import fresh_pg_database
from tests.store.held import thread_held


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SQLiteDriver]:
    opened = await SQLiteDriver.open(tmp_path / "db.sqlite")
    await opened.execute("CREATE TABLE t (n INTEGER)")
    await opened.batch([("INSERT INTO t (n) VALUES (?)", (n,)) for n in (1, 2, 3)])
    yield opened
    await opened.close()


def above_the_first(rows: list[Row]) -> Statement | None:
    return ("SELECT n FROM t WHERE n > ? ORDER BY n", (rows[0][0],)) if rows else None


async def test_sqlite_reads_both_in_one_job_for_its_thread(sqlite: SQLiteDriver) -> None:
    async with thread_held(sqlite):
        read = asyncio.create_task(sqlite.fetch_then(("SELECT min(n) FROM t", ()), above_the_first))
        await asyncio.sleep(0.05)
        # A write that comes after the read: it goes to the thread behind the read's
        # one job.  Were the second statement a job of its own, queued once the first
        # came back, it would go behind this write and miss the row it deletes.
        write = asyncio.create_task(sqlite.execute("DELETE FROM t WHERE n = 3"))
        await asyncio.sleep(0.05)
    first, second = await read
    await write
    assert [tuple(row) for row in first] == [(1,)]
    assert [row[0] for row in second] == [2, 3]  # both statements in one job
    assert [row[0] for row in await sqlite.fetch("SELECT n FROM t ORDER BY n")] == [1, 2]


async def test_sqlite_makes_no_second_read_when_then_names_none(sqlite: SQLiteDriver) -> None:
    seen: list[str] = []
    sqlite._conn.set_trace_callback(seen.append)
    try:
        first, second = await sqlite.fetch_then(
            ("SELECT n FROM t WHERE n > 10", ()), above_the_first
        )
    finally:
        sqlite._conn.set_trace_callback(None)
    assert (first, second) == ([], [])
    assert seen == ["SELECT n FROM t WHERE n > 10"]


async def test_another_users_chat_is_not_read_past_its_row(tmp_path: Path) -> None:
    store = await open_store("", tmp_path)
    try:
        question = MessageRecord("c1", "q1", None, "user", "Hello?")
        await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
        db = store.db
        assert isinstance(db, SQLiteDriver)
        seen: list[str] = []
        db._conn.set_trace_callback(seen.append)
        try:
            assert await store.get_chat_and_messages("c1", "mallory") is None
            found = await store.get_chat_and_messages("c1", "alice")
        finally:
            db._conn.set_trace_callback(None)
        assert found is not None and [m.id for m in found[1]] == ["q1"]
        assert [statement.split(" FROM ")[1].split()[0] for statement in seen] == [
            "chats",  # mallory's ask: the chat's row only, found not hers
            "chats",  # alice's: the row, then its messages
            "messages",
        ]
    finally:
        await store.close()


async def test_sqlite_inside_a_transaction_reads_its_own_writes(sqlite: SQLiteDriver) -> None:
    async with sqlite.transaction() as tx:
        await tx.execute("INSERT INTO t (n) VALUES (9)")
        _, second = await tx.fetch_then(("SELECT min(n) FROM t", ()), above_the_first)
    assert [row[0] for row in second] == [2, 3, 9]


async def test_postgres_reads_both_on_one_connection() -> None:
    async with fresh_pg_database() as url:
        driver = await PostgresDriver.open(url, pool_size=4)
        try:

            def same_backend(rows: list[Row]) -> Statement:
                return "SELECT pg_backend_pid(), ?::int", (rows[0][0],)

            reads = await asyncio.gather(
                *(
                    driver.fetch_then(("SELECT pg_backend_pid()", ()), same_backend)
                    for _ in range(8)
                )
            )
            for first, second in reads:
                assert second[0][0] == first[0][0] == second[0][1]
            assert len({first[0][0] for first, _ in reads}) > 1  # several connections in use
            none = await driver.fetch_then(("SELECT 1 WHERE false", ()), above_the_first)
            assert none == ([], [])
        finally:
            await driver.close()
