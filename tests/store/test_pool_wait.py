"""PostgreSQL's pool, every connection busy (here, each held up by a row another
transaction locks): a statement waits for one at most `POOL_WAIT_S`, then fails
as `DatabaseDown` (503 in every flavour) instead of holding its request, and its
client's connection, for as long as the database does; once one is free again,
statements go through."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.errors import DatabaseDown
from gateway.store import drivers
from gateway.store.drivers import PostgresDriver
from tests.services import fresh_pg_database

WAIT_S = 0.3


async def test_a_statement_waits_for_a_busy_pool_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(drivers, "POOL_WAIT_S", WAIT_S)
    async with fresh_pg_database() as url:
        driver = await PostgresDriver.open(url, 1)
        other = await asyncpg.connect(url)
        try:
            await driver.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
            await driver.execute("INSERT INTO t (n, v) VALUES (1, '')")
            holding = other.transaction()
            await holding.start()
            await other.execute("UPDATE t SET v = 'held' WHERE n = 1")
            # The pool's one connection waits for the row.
            blocked = asyncio.ensure_future(
                driver.execute("UPDATE t SET v = 'w' WHERE n = ?", (1,))
            )
            await asyncio.sleep(0.1)
            assert not blocked.done()
            started = time.monotonic()
            with pytest.raises(DatabaseDown):
                await driver.fetch("SELECT v FROM t")
            assert WAIT_S <= time.monotonic() - started < WAIT_S + 2
            assert (
                "every connection of the pool (GATEWAY_DATABASE_POOL_SIZE) is busy" in caplog.text
            )
            await holding.commit()
            assert await asyncio.wait_for(blocked, 5) == 1
            assert await driver.fetch("SELECT v FROM t") == [("w",)]
        finally:
            await other.close()
            await driver.close()
