"""Access that ends while a connection is open: expired tokens, revoked keys,
removed users.

A token is checked when a connection opens; this module keeps it checked
for as long as the connection stays open.  Every authenticated socket holds
a `Lease` on its principal::

    guard.hold(principal, end) ─▶ Lease            end(reason): the transport
      ├ the token's `exp` passes        → "Token expired"   closes the socket
      ├ the API key it used is revoked  → "API key revoked" (1008, or a
      └ its user is removed             → "User removed"    Socket.IO disconnect)

Revocations are rows in the store (`revocations`), so they come from any
process — a REST route on any replica, or `gateway users remove` — and reach
every replica: each polls for new rows every `recheck_s` (one indexed query,
whatever the number of connections) and ends the matching leases at once.
The process that revokes ends its own leases without waiting for the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from gateway.edge.auth import Principal
from gateway.errors import DatabaseDown
from gateway.store import Revocation, UserStore

log = logging.getLogger(__name__)

EXPIRED = "Token expired"
KEY_REVOKED = "API key revoked"
USER_REMOVED = "User removed"

# Rows are read again for this long after their time: a transaction that
# committed late (PostgreSQL orders commits, not timestamps) is still seen.
OVERLAP_MS = 5_000

End = Callable[[str], None]
OnRemoved = Callable[[str], Awaitable[None]]


class Lease:
    """One connection's hold on its access; `release()` when the connection ends."""

    __slots__ = ("_guard", "_timer", "end", "principal")

    def __init__(self, guard: AccessGuard, principal: Principal, end: End) -> None:
        self._guard = guard
        self.principal = principal
        self.end = end
        self._timer: asyncio.TimerHandle | None = None

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._guard._leases[self.principal.user_id].discard(self)
        if not self._guard._leases[self.principal.user_id]:
            del self._guard._leases[self.principal.user_id]

    def _ended(self, reason: str) -> None:
        if self.principal.user_id not in self._guard._leases or (
            self not in self._guard._leases[self.principal.user_id]
        ):
            return  # released meanwhile (the connection ended first)
        self.release()
        self.end(reason)


class AccessGuard:
    def __init__(self, store: UserStore, recheck_s: float, on_removed: OnRemoved) -> None:
        self._store = store
        self._recheck_s = recheck_s
        self._on_removed = on_removed
        self._leases: defaultdict[str, set[Lease]] = defaultdict(set)
        self._seen: set[tuple[str, str, int]] = set()
        self._since_ms = int(time.time() * 1000)
        self._task: asyncio.Task[None] | None = None

    def hold(self, principal: Principal, end: End) -> Lease:
        """Watch `principal`'s access for a connection; `end(reason)` closes it."""
        lease = Lease(self, principal, end)
        self._leases[principal.user_id].add(lease)
        loop = asyncio.get_running_loop()
        if principal.expires_at is not None:
            delay = max(0.0, principal.expires_at - time.time())
            lease._timer = loop.call_later(delay, lease._ended, EXPIRED)
        # A revocation this replica already saw, of the key or user authenticated a
        # moment ago (before the revocation was written, or while the connection
        # was still opening): ended as if the lease had been held then.  Revoked
        # keys and removed users never come back, so any match is a late one.
        for user_id, key_hash, _ in self._seen:
            if user_id == principal.user_id and (not key_hash or key_hash == principal.key_hash):
                # Soon, not now: the transport is still setting the connection up.
                loop.call_soon(lease._ended, KEY_REVOKED if key_hash else USER_REMOVED)
                break
        return lease

    def connections(self, user_id: str) -> int:
        return len(self._leases.get(user_id, ()))

    async def revoked(self, revocation: Revocation) -> None:
        """End what `revocation` takes away, here and now (other replicas poll)."""
        if (revocation.user_id, revocation.key_hash, revocation.at_ms) in self._seen:
            return
        self._seen.add((revocation.user_id, revocation.key_hash, revocation.at_ms))
        reason = KEY_REVOKED if revocation.key_hash else USER_REMOVED
        for lease in list(self._leases.get(revocation.user_id, ())):
            if not revocation.key_hash or lease.principal.key_hash == revocation.key_hash:
                lease._ended(reason)
        if not revocation.key_hash:
            await self._on_removed(revocation.user_id)

    # -- the poll every replica runs ------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="access-recheck")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                await self.check_now()
            except DatabaseDown:
                # A store that is briefly away: try again at the next tick (one line;
                # the store's own log says what went away).
                log.warning("access recheck failed: the database is unavailable; retrying")
            except Exception:
                log.warning("access recheck failed; retrying", exc_info=True)

    async def check_now(self) -> None:
        rows = await self._store.revocations_since(self._since_ms - OVERLAP_MS)
        for revocation in rows:
            await self.revoked(revocation)
        if rows:
            self._since_ms = max(self._since_ms, max(r.at_ms for r in rows))
        # Forget what the overlap window can no longer return.
        horizon = self._since_ms - OVERLAP_MS
        self._seen = {seen for seen in self._seen if seen[2] >= horizon}
