"""SQLite's one thread held busy, so that what a test does meanwhile queues behind."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from gateway.store import Store
from gateway.store.drivers import SQLiteDriver


class Hold:
    """A job for the driver's thread, queued now behind what is already queued,
    that keeps the thread busy from when it runs until `release()`."""

    def __init__(self, driver: SQLiteDriver) -> None:
        self.running, self._released = threading.Event(), threading.Event()
        self._job = asyncio.ensure_future(driver._run(self._hold))

    def _hold(self, _conn: object) -> None:
        self.running.set()
        self._released.wait(5)

    async def until_running(self) -> None:
        assert await asyncio.to_thread(self.running.wait, 5), "the thread was never free"

    async def release(self) -> None:
        self._released.set()
        await self._job


@contextlib.asynccontextmanager
async def thread_held(driver: SQLiteDriver) -> AsyncIterator[None]:
    """The driver's thread busy for the block (the calls made in it wait in its
    queue, in the order they came), let go at its end."""
    hold = Hold(driver)
    await hold.until_running()
    try:
        yield
    finally:
        await hold.release()


def sqlite_of(store: Store) -> SQLiteDriver:
    """The driver of a store opened on SQLite (what the helpers above hold)."""
    db = store.db
    assert isinstance(db, SQLiteDriver)
    return db
