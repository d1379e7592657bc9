"""SQLite's one thread held busy, so that what a test does meanwhile queues behind."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from gateway.store.drivers import SQLiteDriver


@contextlib.asynccontextmanager
async def thread_held(driver: SQLiteDriver) -> AsyncIterator[None]:
    """The driver's thread busy for the block (the calls made in it wait in its
    queue, in the order they came), let go at its end."""
    held, release = threading.Event(), threading.Event()

    def hold(_conn: object) -> None:
        held.set()
        release.wait(5)

    blocker = asyncio.create_task(driver._run(hold))
    await asyncio.to_thread(held.wait, 5)
    try:
        yield
    finally:
        release.set()
        await blocker
