"""Two database drivers behind one small interface, so every query is written once.

Queries use `?` placeholders; the PostgreSQL driver rewrites them to `$1…`
(no query here has a `?` inside a string literal).  `transaction()` yields
a driver bound to one connection; everything inside commits or rolls back
together.  SQLite has one connection (aiosqlite runs it in a thread),
serialised by a lock; PostgreSQL uses an asyncpg pool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

Row = Sequence[Any]


class Driver(Protocol):
    dialect: str

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it touched."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    def transaction(self) -> Any:
        """`async with driver.transaction() as tx:` — tx is a Driver."""
        ...

    async def close(self) -> None: ...


class _SQLiteConnection:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, tuple(args))
        count = cursor.rowcount
        await cursor.close()
        return count

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, tuple(args)) as cursor:
            return list(await cursor.fetchall())

    async def executescript(self, sql: str) -> None:
        # Statement by statement, inside the caller's transaction
        # (sqlite3's executescript would COMMIT first).
        for statement in _statements(sql):
            await self.execute(statement)

    def transaction(self) -> Any:
        raise RuntimeError("already in a transaction")

    async def close(self) -> None:
        raise RuntimeError("close the SQLiteDriver, not a transaction")


class SQLiteDriver:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._bound = _SQLiteConnection(conn)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteDriver:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=10000")
        await conn.execute("PRAGMA synchronous=NORMAL")
        return cls(conn)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._lock:
            return await self._bound.execute(sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            return await self._bound.fetch(sql, args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteConnection]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._bound
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def close(self) -> None:
        await self._conn.close()


_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresConnection:
    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        status: str = await self._conn.execute(_numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.fetch(_numbered(sql), *args))

    async def executescript(self, sql: str) -> None:
        for statement in _statements(sql):
            await self._conn.execute(statement)

    def transaction(self) -> Any:
        raise RuntimeError("already in a transaction")

    async def close(self) -> None:
        raise RuntimeError("close the PostgresDriver, not a transaction")


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresDriver:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=10)
        return cls(pool)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._pool.acquire() as conn:
            return await _PostgresConnection(conn).execute(sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._pool.acquire() as conn:
            return await _PostgresConnection(conn).fetch(sql, args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresConnection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresConnection(conn)

    async def close(self) -> None:
        await self._pool.close()


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
