"""`bus/locks.py` on real Redis: one holder of a key across replicas (two `RedisLocks`
as two replicas have them), a holder that died frees the key after `hold_s`, a
waiter past `wait_s` is told to try again, and Redis unreachable leaves the
replica's own lock (edits go on)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from gateway.bus.locks import RedisLocks
from gateway.bus.memory import LocalLocks
from gateway.errors import Conflict
from tests.bus.support import SHARED_URL


def prefix() -> str:
    return f"test-locks-{uuid.uuid4().hex[:8]}:"


async def test_two_replicas_hold_a_key_one_at_a_time() -> None:
    shared = prefix()
    one, two = RedisLocks(SHARED_URL, shared), RedisLocks(SHARED_URL, shared)
    holding: list[str] = []
    overlaps: list[list[str]] = []

    async def edit(locks: RedisLocks, name: str) -> None:
        async with locks("chat:c1"):
            holding.append(name)
            if len(holding) > 1:
                overlaps.append(list(holding))
            await asyncio.sleep(0.01)
            holding.remove(name)

    try:
        await asyncio.gather(*(edit(locks, f"{i}") for i in range(8) for locks in (one, two)))
        assert overlaps == []
        # Another key is not held up by this one's holder.
        async with one("chat:c1"):
            async with asyncio.timeout(1):
                async with two("chat:c2"):
                    pass
    finally:
        await one.close()
        await two.close()


async def test_a_holder_that_died_frees_the_key_after_its_hold() -> None:
    shared = prefix()
    dead = RedisLocks(SHARED_URL, shared, hold_s=0.3)
    alive = RedisLocks(SHARED_URL, shared, wait_s=5)
    try:
        held = dead("chat:c1")
        await held.__aenter__()  # and never left: the replica died holding it
        began = asyncio.get_running_loop().time()
        async with alive("chat:c1"):
            waited = asyncio.get_running_loop().time() - began
        assert 0.1 < waited < 3, waited
    finally:
        await dead.close()
        await alive.close()


async def test_a_waiter_past_its_wait_is_told_to_try_again() -> None:
    shared = prefix()
    one, two = RedisLocks(SHARED_URL, shared), RedisLocks(SHARED_URL, shared, wait_s=0.2)
    try:
        async with one("chat:c1"):
            with pytest.raises(Conflict, match="try again"):
                async with two("chat:c1"):
                    raise AssertionError("held by the other replica")
        async with two("chat:c1"):  # free again once the first let go
            pass
    finally:
        await one.close()
        await two.close()


async def test_redis_unreachable_leaves_the_replicas_own_lock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    locks = RedisLocks("redis://127.0.0.1:1/0", prefix())
    holding: list[int] = []
    overlaps = 0

    async def edit(i: int) -> None:
        nonlocal overlaps
        async with locks("chat:c1"):
            holding.append(i)
            overlaps += len(holding) > 1
            await asyncio.sleep(0.01)
            holding.remove(i)

    try:
        with caplog.at_level(logging.WARNING):
            await asyncio.gather(*(edit(i) for i in range(4)))
        assert overlaps == 0
        assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
    finally:
        await locks.close()


async def test_a_local_lock_is_dropped_with_its_last_user() -> None:
    locks = LocalLocks()
    inside = asyncio.Event()

    async def second() -> None:
        async with locks("a"):
            inside.set()

    async with locks("a"):
        task = asyncio.create_task(second())
        await asyncio.sleep(0.01)
        assert len(locks) == 1 and not inside.is_set()  # one lock, held, waited for
    await task
    assert inside.is_set() and len(locks) == 0
