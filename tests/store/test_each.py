"""`Driver.each`: writes that do not depend on each other, in one call.  On
PostgreSQL each is its own transaction: a row one of them wrote is not kept
locked while a later one waits for a row another transaction holds, so a write
to the first row goes through meanwhile (in one transaction it would wait for
the whole call).  On SQLite they share one transaction (one commit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.store.drivers import PostgresDriver, SQLiteDriver
from tests.services import fresh_pg_database

UPDATES = [("UPDATE t SET v = ? WHERE n = ?", ("each", n)) for n in (1, 2)]


@pytest.fixture
async def pg() -> AsyncIterator[tuple[PostgresDriver, str]]:
    async with fresh_pg_database() as url:
        driver = await PostgresDriver.open(url, 4)
        await driver.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
        await driver.batch([("INSERT INTO t (n, v) VALUES (?, ?)", (n, "")) for n in (1, 2)])
        yield driver, url
        await driver.close()


async def test_postgres_lets_go_of_each_row_at_once(pg: tuple[PostgresDriver, str]) -> None:
    driver, url = pg
    other = await asyncpg.connect(url)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute("UPDATE t SET v = 'held' WHERE n = 2")  # row 2 locked
        each = asyncio.ensure_future(driver.each(UPDATES))
        await asyncio.sleep(0.2)
        assert not each.done()  # waiting for row 2
        # Row 1's write is done and let go: another write to it is not held up.
        await asyncio.wait_for(driver.execute("UPDATE t SET v = 'end' WHERE n = 1"), 2)
        await holding.commit()
        await asyncio.wait_for(each, 5)
    finally:
        await other.close()
    rows = await driver.fetch("SELECT n, v FROM t ORDER BY n")
    assert [tuple(row) for row in rows] == [(1, "end"), (2, "each")]


async def test_sqlite_writes_them_in_one_transaction(tmp_path: Path) -> None:
    driver = await SQLiteDriver.open(tmp_path / "db.sqlite")
    try:
        await driver.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
        await driver.batch([("INSERT INTO t (n, v) VALUES (?, ?)", (n, "")) for n in (1, 2)])
        seen: list[str] = []
        driver._conn.set_trace_callback(seen.append)
        await driver.each(UPDATES)
        driver._conn.set_trace_callback(None)
        assert seen[0] == "BEGIN IMMEDIATE" and seen[-1] == "COMMIT" and len(seen) == 4
        rows = await driver.fetch("SELECT v FROM t ORDER BY n")
        assert [row[0] for row in rows] == ["each", "each"]
    finally:
        await driver.close()
