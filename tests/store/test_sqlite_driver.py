"""The SQLite driver sends calls to its one thread as they come (a burst is
pipelined, not one event-loop round trip after another), and still keeps every
other coroutine's statements out of an open `transaction()`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.drivers import SQLiteDriver
from tests.store.held import thread_held


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[SQLiteDriver]:
    opened = await SQLiteDriver.open(tmp_path / "db.sqlite")
    await opened.execute("CREATE TABLE t (n INTEGER)")
    yield opened
    await opened.close()


async def test_calls_meanwhile_never_land_inside_a_transaction(driver: SQLiteDriver) -> None:
    seen: list[int] = []

    async def count() -> None:
        rows = await driver.fetch("SELECT count(*) FROM t")
        seen.append(rows[0][0])

    async def insert() -> None:
        await driver.execute("INSERT INTO t (n) VALUES (7)")

    with pytest.raises(RuntimeError, match="undone"):
        async with driver.transaction() as tx:
            await tx.execute("INSERT INTO t (n) VALUES (1)")
            others = [asyncio.create_task(count()), asyncio.create_task(insert())]
            await asyncio.sleep(0.05)  # they are waiting, not run inside the transaction
            assert seen == []
            assert [row[0] for row in await tx.fetch("SELECT n FROM t")] == [1]
            raise RuntimeError("undone")
    await asyncio.gather(*others)
    # The count ran after the rollback: it never saw the transaction's row.
    assert seen == [0]
    assert [row[0] for row in await driver.fetch("SELECT n FROM t")] == [7]


async def test_a_burst_goes_to_the_thread_without_waiting_for_the_loop(
    driver: SQLiteDriver,
) -> None:
    # The thread is held; a burst of calls is made meanwhile.  Sent as they come,
    # they are all queued for the thread before it is let go; one round trip after
    # another, only the first would be.
    async with thread_held(driver):
        calls = [
            asyncio.create_task(driver.execute("INSERT INTO t (n) VALUES (?)", (n,)))
            for n in range(50)
        ]
        await asyncio.sleep(0.05)
        queued = driver._executor._work_queue.qsize()
    await asyncio.gather(*calls)
    assert queued == 50
    rows = await driver.fetch("SELECT n FROM t ORDER BY rowid")
    assert [row[0] for row in rows] == list(range(50))  # and in the order they came


async def test_a_transaction_given_up_while_its_begin_waits_leaves_none_open(
    driver: SQLiteDriver, tmp_path: Path
) -> None:
    # Another connection (another process: the admin command, say) holds the write
    # lock, so the driver's BEGIN waits in its thread; the caller gives up meanwhile.
    # The BEGIN still runs once the lock goes: the connection must not be left inside
    # a transaction nobody will end (later statements never committed, every later
    # transaction refused).
    other = sqlite3.connect(str(tmp_path / "db.sqlite"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = asyncio.Event()

    async def write() -> None:
        started.set()
        async with driver.transaction() as tx:
            await tx.execute("INSERT INTO t (n) VALUES (1)")

    task = asyncio.create_task(write())
    await started.wait()
    await asyncio.sleep(0.2)  # the BEGIN is waiting for the other connection's lock
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    other.execute("COMMIT")  # the lock goes: the driver's BEGIN now succeeds
    await driver.execute("INSERT INTO t (n) VALUES (2)")
    await driver.batch([("INSERT INTO t (n) VALUES (?)", (3,))])
    seen = [row[0] for row in other.execute("SELECT n FROM t ORDER BY rowid").fetchall()]
    other.close()
    assert seen == [2, 3]  # committed, and nothing of the given-up transaction
