"""One holder of a key at a time across replicas, on Redis.

    async with locks("chat:<id>"):      this replica's lock of the key, then Redis's
        ...                             read, merge, write

Each key is first this replica's own `asyncio.Lock` (`memory.LocalLocks`), so
a replica has at most one waiter per key on Redis; then redis-py's `Lock`: a
key `<prefix>lock:<key>` set only if absent (`SET NX PX`) with a token of its
own, released by a script that deletes it only while it still holds that
token, polled every `POLL_S` while another replica holds it.

Bounds (LIMITS.md): a holder keeps the key at most `HOLD_S` (a replica that
dies holding it frees it then; an edit longer than that is no longer
exclusive); a waiter waits at most `WAIT_S`, then gets `Conflict` (409, "try
again").  Redis unreachable: the replica's own lock alone, a warning at most
every 30 s (`link.Complaints`): an outage must not stop edits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from gateway.bus.link import Complaints, client
from gateway.bus.memory import LocalLocks
from gateway.errors import Conflict

HOLD_S = 30.0
WAIT_S = 10.0
POLL_S = 0.02


class RedisLocks:
    def __init__(
        self, url: str, prefix: str, hold_s: float = HOLD_S, wait_s: float = WAIT_S
    ) -> None:
        self._redis = client(url)
        self._prefix = f"{prefix}lock:"
        self._hold_s = hold_s
        self._wait_s = wait_s
        self._local = LocalLocks()
        self._unreachable = Complaints("a lock on Redis not taken: Redis unreachable")

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        async with self._local(key):
            lock = self._redis.lock(
                self._prefix + key,
                timeout=self._hold_s,
                sleep=POLL_S,
                blocking_timeout=self._wait_s,
            )
            try:
                held = await lock.acquire()
            except RedisError as exc:
                self._unreachable.note(key=key, error=type(exc).__name__)
                held = None
            if held is False:
                raise Conflict("Another edit of this chat is taking long; try again")
            try:
                yield
            finally:
                if held:
                    await _release(lock)

    async def close(self) -> None:
        await self._redis.aclose()


async def _release(lock: Lock) -> None:
    """Let go: already expired (`HOLD_S` passed) or Redis gone, nothing to undo."""
    with contextlib.suppress(LockError, RedisError):
        await lock.release()
