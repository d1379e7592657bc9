"""Two database drivers behind one small interface, so every query is written once.

Queries use `?` placeholders; the PostgreSQL driver rewrites them to `$1…`
(no query here has a `?` inside a string literal).

    execute(sql, args) -> rows touched      fetch(sql, args) -> rows
    batch([(sql, args), ...]) -> [rows touched, ...]   one transaction, one round trip
    fetch_then((sql, args), then) -> (rows, rows)     a read and the read it decides
                                                      (`then(rows)`), one hop, one connection
    transaction() -> a driver bound to one connection (several awaits, rarely needed)

SQLite runs on one connection in one worker thread (stdlib `sqlite3`); each
call is one hop to that thread and back, so `batch` is how a write of several
rows stays one hop.  Calls go to the thread as they come, and it takes them in
order: a burst of replies' reads and writes is pipelined, not one round trip
through the event loop after another.  An asyncio lock, held by an open
`transaction()`, keeps other coroutines' statements out of it: a call that
comes meanwhile waits for the lock.  PostgreSQL uses an asyncpg pool; `batch` is one
acquire and one transaction.

Every string argument is made storable first (`gateway/text.py`: no NUL, no lone
surrogate), here for both databases, whatever route or flavour it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg

from gateway.errors import DatabaseDown
from gateway.store.errors import StoreUnavailable, why_unavailable
from gateway.text import storable_args

log = logging.getLogger(__name__)

# Seconds to wait for PostgreSQL at start-up before saying it is unreachable.
CONNECT_TIMEOUT_S = 10.0
# Seconds a statement waits for one of the pool's connections (all busy: a burst,
# or statements held up by a lock) before its request is answered 503 instead.
POOL_WAIT_S = 10.0

Row = Sequence[Any]
Statement = tuple[str, Sequence[Any]]
# What `fetch_then` reads second, decided from the first read's rows (None: nothing).
Then = Callable[[list[Row]], Statement | None]
T = TypeVar("T")


class Driver(Protocol):
    dialect: str

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it touched."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        """Run statements in one transaction; the rows each touched."""
        ...

    async def each(self, statements: Sequence[Statement]) -> None:
        """Run writes that do not depend on each other, one after the other, in one
        call.  On PostgreSQL each is a transaction of its own, so no row stays
        locked past its own statement: no other write waits for the rest of them,
        none can deadlock with them; one that fails ends the call there (those
        before it are done, those after it not run).  On
        SQLite, whose one thread runs every write in turn anyway, they share one
        transaction (one commit), and one that fails undoes them all."""
        ...

    async def fetch_then(self, first: Statement, then: Then) -> tuple[list[Row], list[Row]]:
        """`first`'s rows, and the rows of the statement `then(rows)` names (none when
        it names none), read one after the other on one connection, in one hop to
        SQLite's thread: a read that depends on another (a chat's messages, once its
        row says whose it is) costs one call, not two.  `then` is pure and quick (on
        SQLite it runs in the thread).  Not one snapshot: the second read may see
        rows written after the first."""
        ...

    def transaction(self) -> Any:
        """`async with driver.transaction() as tx:` — tx is a Driver."""
        ...

    async def close(self) -> None: ...


# -- SQLite ------------------------------------------------------------------------
def _sqlite_execute(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
    cursor = conn.execute(sql, tuple(storable_args(args)))
    try:
        return cursor.rowcount
    finally:
        cursor.close()


def _sqlite_fetch(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
    cursor = conn.execute(sql, tuple(storable_args(args)))
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _sqlite_fetch_then(
    conn: sqlite3.Connection, first: Statement, then: Then
) -> tuple[list[Row], list[Row]]:
    rows = _sqlite_fetch(conn, *first)
    second = then(rows)
    return rows, ([] if second is None else _sqlite_fetch(conn, *second))


def _sqlite_roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _logged_if_failed(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.error("SQLite could not roll a transaction back: %s", error)


def _sqlite_batch(conn: sqlite3.Connection, statements: Sequence[Statement]) -> list[int]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = [_sqlite_execute(conn, sql, args) for sql, args in statements]
        conn.execute("COMMIT")
    except BaseException:
        _sqlite_roll_back(conn)  # a COMMIT refused leaves the transaction open too
        raise
    return counts


class _SQLiteBound:
    """The driver inside `transaction()`: same thread, no lock (the transaction holds it)."""

    dialect = "sqlite"

    def __init__(self, owner: SQLiteDriver) -> None:
        self._owner = owner

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._owner._run(_sqlite_execute, sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return await self._owner._run(_sqlite_fetch, sql, args)

    async def fetch_then(self, first: Statement, then: Then) -> tuple[list[Row], list[Row]]:
        return await self._owner._run(_sqlite_fetch_then, first, then)

    async def executescript(self, sql: str) -> None:
        # Statement by statement, inside the caller's transaction
        # (sqlite3's executescript would COMMIT first).
        for statement in _statements(sql):
            await self.execute(statement)

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        raise RuntimeError("batch() runs its own transaction: call it on the driver")

    async def each(self, statements: Sequence[Statement]) -> None:
        raise RuntimeError("each() runs its own transaction: call it on the driver")

    def transaction(self) -> Any:
        raise RuntimeError("already in a transaction")

    async def close(self) -> None:
        raise RuntimeError("close the SQLiteDriver, not a transaction")


class SQLiteDriver:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor
        self._lock = asyncio.Lock()
        self._bound = _SQLiteBound(self)

    @classmethod
    async def open(cls, path: Path) -> SQLiteDriver:
        # The directory is the operator's (DATA_DIR, or the one a sqlite:/// URL
        # names): made by the start-up checks or not at all, never here.
        if not path.parent.is_dir():
            raise StoreUnavailable(f"the directory {path.parent} does not exist")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")

        def connect() -> sqlite3.Connection:
            # A new database is made readable by its owner only (it holds password
            # hashes); SQLite gives its WAL and shared-memory files the same mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            # isolation_level=None: BEGIN/COMMIT are ours.  The connection is
            # only ever used from the executor's one thread.
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except (sqlite3.Error, OSError) as exc:  # (OSError: making the file)
            executor.shutdown(wait=False)
            raise StoreUnavailable(why_unavailable(exc)) from None
        return cls(conn, executor)

    def _submit(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`function(conn, *args)` queued for the thread now (it takes calls in order)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, function, self._conn, *args)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await self._submit(function, *args)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """One call on the connection: to the thread at once, unless a `transaction()`
        holds the connection (then as soon as it ends: the lock is held only to queue
        the call, not while it runs, so the calls waiting behind one transaction go
        to the thread together)."""
        if self._lock.locked():
            async with self._lock:
                queued = self._submit(function, *args)
            return await queued
        return await self._run(function, *args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._call(_sqlite_execute, sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return await self._call(_sqlite_fetch, sql, args)

    async def fetch_then(self, first: Statement, then: Then) -> tuple[list[Row], list[Row]]:
        return await self._call(_sqlite_fetch_then, first, then)

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        return await self._call(_sqlite_batch, statements)

    async def each(self, statements: Sequence[Statement]) -> None:
        await self._call(_sqlite_batch, statements)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteBound]:
        async with self._lock:
            try:
                await self._run(_sqlite_execute, "BEGIN IMMEDIATE", ())
                yield self._bound
                await self._run(_sqlite_execute, "COMMIT", ())
            except BaseException:
                # Whatever failed or was cancelled (the body, a COMMIT refused, or a
                # BEGIN still run by the thread after its caller gave up), the
                # connection must leave the transaction: a ROLLBACK queued now runs
                # before any later call (the thread takes them in order).
                self._roll_back()
                raise

    def _roll_back(self) -> None:
        try:
            undone = self._submit(_sqlite_roll_back)
        except RuntimeError:  # the driver is closed: so is its connection
            return
        undone.add_done_callback(_logged_if_failed)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


# -- PostgreSQL --------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _touched(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _PostgresConnection:
    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _touched(await self._conn.execute(_numbered(sql), *storable_args(args)))

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.fetch(_numbered(sql), *storable_args(args)))

    async def fetch_then(self, first: Statement, then: Then) -> tuple[list[Row], list[Row]]:
        rows = await self.fetch(*first)
        second = then(rows)
        return rows, ([] if second is None else await self.fetch(*second))

    async def executescript(self, sql: str) -> None:
        for statement in _statements(sql):
            await self._conn.execute(statement)

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        return [await self.execute(sql, args) for sql, args in statements]

    async def each(self, statements: Sequence[Statement]) -> None:
        await self.batch(statements)  # inside the caller's transaction

    def transaction(self) -> Any:
        raise RuntimeError("already in a transaction")

    async def close(self) -> None:
        raise RuntimeError("close the PostgresDriver, not a transaction")


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, pool_size: int) -> PostgresDriver:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # (InterfaceError: the URL's options refused, e.g. a bad sslrootcert file.)
            raise StoreUnavailable(why_unavailable(exc)) from None
        return cls(pool)

    def _acquire(self) -> Any:
        """One of the pool's connections, waited for at most POOL_WAIT_S."""
        return self._pool.acquire(timeout=POOL_WAIT_S)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with _reachable():
            async with self._acquire() as conn:
                return await _PostgresConnection(conn).execute(sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with _reachable():
            async with self._acquire() as conn:
                return await _PostgresConnection(conn).fetch(sql, args)

    async def fetch_then(self, first: Statement, then: Then) -> tuple[list[Row], list[Row]]:
        with _reachable():
            async with self._acquire() as conn:
                return await _PostgresConnection(conn).fetch_then(first, then)

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        with _reachable():
            async with self._acquire() as conn, conn.transaction():
                return await _PostgresConnection(conn).batch(statements)

    async def each(self, statements: Sequence[Statement]) -> None:
        with _reachable():
            async with self._acquire() as conn:  # no transaction: each its own
                await _PostgresConnection(conn).batch(statements)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresConnection]:
        with _reachable():
            async with self._acquire() as conn, conn.transaction():
                yield _PostgresConnection(conn)

    async def close(self) -> None:
        await self._pool.close()


# What a database that went away raises, whichever step met it: connecting again
# (refused, unresolvable, timed out), a connection the server dropped, or the
# server shutting down or starting up.
_GONE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)


@contextmanager
def _reachable() -> Iterator[None]:
    """A database that went away mid-run, or whose pool had no connection free for
    POOL_WAIT_S: `DatabaseDown` (503 in every flavour, logged once per statement at
    WARNING), not a traceback; asyncpg's pool reconnects by itself once it is back."""
    try:
        yield
    except _GONE as exc:
        if isinstance(exc, TimeoutError):
            # (No connection within POOL_WAIT_S: every one busy, or none can be made.)
            log.warning(
                "no database connection within %.0f s: the database is down, or every "
                "connection of the pool (GATEWAY_DATABASE_POOL_SIZE) is busy",
                POOL_WAIT_S,
            )
        else:
            log.warning("the database is unavailable", extra={"error": type(exc).__name__})
        raise DatabaseDown() from None


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
