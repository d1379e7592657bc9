"""`bus/locks.py` on real Redis: one holder of a key across replicas (two `RedisLocks`
as two replicas have them), a holder that died frees the key after `hold_s`, a
waiter past `wait_s` is told to try again, and Redis unreachable leaves the
replica's own lock (edits go on)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.bus.locks import RedisLocks
from gateway.bus.memory import LocalLocks
from gateway.errors import Conflict
from tests.bus.support import SHARED_URL
from tests.fakes.upstream import free_port


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
    # What a replica that died holding the lock leaves: its key, expiring.
    dead = redis.asyncio.Redis.from_url(SHARED_URL)
    await dead.set(f"{shared}lock:chat:c1", "a dead replica's token", px=300)
    alive = RedisLocks(SHARED_URL, shared, wait_s=5)
    try:
        began = asyncio.get_running_loop().time()
        async with alive("chat:c1"):
            waited = asyncio.get_running_loop().time() - began
        assert 0.1 < waited < 3, waited
    finally:
        await dead.aclose()
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


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own (it is slowed and frozen), DEBUG allowed."""
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary is not None
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*args, "--enable-debug-command", "yes"], stdout=subprocess.DEVNULL)
    admin = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            if admin.ping():
                break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    admin.close()
    yield f"redis://127.0.0.1:{port}/0", proc
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait(5)


async def test_an_acquire_cancelled_on_its_way_lets_go_of_the_key(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    # The client left while its edit's SET was on its way: Redis still ran it.
    url, _ = own_redis
    shared = prefix()
    one, two = RedisLocks(url, shared), RedisLocks(url, shared, wait_s=2)
    slow = redis.asyncio.Redis.from_url(url)
    try:
        async with one("chat:warm"):  # its connection made: the SET goes out at once
            pass
        sleeping = asyncio.ensure_future(slow.execute_command("DEBUG", "SLEEP", "0.3"))
        await asyncio.sleep(0.05)  # Redis is busy: the SET below waits behind it
        entering = asyncio.ensure_future(one("chat:c1").__aenter__())
        await asyncio.sleep(0.1)
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        await sleeping
        began = time.monotonic()
        async with two("chat:c1"):
            assert time.monotonic() - began < 1, "the key was left held"
    finally:
        await slow.aclose()
        await one.close()
        await two.close()


async def test_a_hung_redis_holds_an_edit_up_a_moment_not_a_connection_timeout(
    own_redis: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    url, proc = own_redis
    locks = RedisLocks(url, prefix())
    try:
        async with locks("chat:c1"):  # connected, then Redis freezes
            pass
        os.kill(proc.pid, signal.SIGSTOP)
        began = time.monotonic()
        with caplog.at_level(logging.WARNING):
            async with locks("chat:c1"):
                took = time.monotonic() - began
        assert took < 2.5, took  # the command's bound (and the let-go's), not 5 s or more
        assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await locks.close()


async def test_every_waiter_is_told_within_the_wait_however_many_queue() -> None:
    shared = prefix()
    holder = RedisLocks(SHARED_URL, shared)
    waiting = RedisLocks(SHARED_URL, shared, wait_s=0.4)
    try:
        async with holder("chat:c1"):

            async def told() -> float:
                began = time.monotonic()
                with pytest.raises(Conflict):
                    async with waiting("chat:c1"):
                        raise AssertionError("held by the other replica")
                return time.monotonic() - began

            waits = await asyncio.gather(*(told() for _ in range(4)))
        # One wait in all, this replica's lock and Redis's: not one after another.
        assert max(waits) < 1.0, waits
    finally:
        await holder.close()
        await waiting.close()
