"""One holder of a key at a time across replicas, on Redis.

    async with locks("chat:<id>"):      this replica's lock of the key, then Redis's
        ...                             read, merge, write

Each key is first this replica's own `asyncio.Lock` (`memory.LocalLocks`), so
a replica has at most one waiter per key on Redis; then redis-py's `Lock`: a
key `<prefix>lock:<key>` set only if absent (`SET NX PX`) with a token of our
own, released by a script that deletes it only while it still holds that
token, polled every `POLL_S` while another replica holds it.  The token is
ours so that an acquire cut short (the client left and its handler was
cancelled, a command timed out) lets go of what may have reached Redis anyway.

Bounds (LIMITS.md): a holder keeps the key at most `HOLD_S` (a replica that
dies holding it frees it then; an edit longer than that is no longer
exclusive); a waiter waits at most `WAIT_S` in all (this replica's lock and
Redis's), then gets `Conflict` (409, "try again"); each command to Redis is
waited for at most `COMMAND_S`.  Redis unreachable or hung: the replica's own
lock alone, a warning at most every 30 s (`link.Complaints`): an outage must
not stop edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from gateway.bus.link import Complaints, client
from gateway.bus.memory import LocalLocks
from gateway.errors import Conflict

HOLD_S = 30.0
WAIT_S = 10.0
POLL_S = 0.02
COMMAND_S = 0.5


class RedisLocks:
    def __init__(
        self, url: str, prefix: str, hold_s: float = HOLD_S, wait_s: float = WAIT_S
    ) -> None:
        self._redis = client(url, timeout_s=COMMAND_S)
        self._prefix = f"{prefix}lock:"
        self._hold_s = hold_s
        self._wait_s = wait_s
        self._local = LocalLocks()
        self._unreachable = Complaints("a lock on Redis not taken: Redis unreachable")

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    await stack.enter_async_context(self._local(key))
            except TimeoutError:
                raise Conflict(BUSY) from None
            token = uuid.uuid4().hex
            lock = self._redis.lock(
                self._prefix + key,
                timeout=self._hold_s,
                sleep=POLL_S,
                blocking_timeout=max(0.0, deadline - loop.time()),
            )
            held: bool | None
            try:
                held = await lock.acquire(token=token)
            except RedisError as exc:
                self._unreachable.note(key=key, error=type(exc).__name__)
                await _release(lock, token)  # (a SET that reached Redis before the error)
                held = None
            except BaseException:
                await asyncio.shield(_release(lock, token))  # cancelled mid-acquire
                raise
            if held is False:
                raise Conflict(BUSY)
            try:
                yield
            finally:
                if held:
                    await asyncio.shield(_release(lock, token))

    async def close(self) -> None:
        await self._redis.aclose()


BUSY = "Another edit of this chat is taking long; try again"


async def _release(lock: Lock, token: str) -> None:
    """Let go of the key if `token` holds it: already expired (`HOLD_S` passed),
    never taken, or Redis gone: nothing to undo."""
    with contextlib.suppress(LockError, RedisError):
        await lock.do_release(token.encode())
