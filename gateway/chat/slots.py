"""How many replies one user may have running at once (`GATEWAY_MAX_REPLIES_PER_USER`).

    take(user_id, n)   before anything is written: n slots, or RateLimited (429 in
                       every flavour) and nothing changes
    release(user_id)   when a reply ends (the runner's, or a pure-API stream's),
                       or when a start that took a slot fails before it ran

Counted per replica, like the replies themselves (`running.py`): behind a
balancer a user's requests spread over the replicas, each holding its share.
Model streams are the costliest thing a user can hold open; a script that
starts hundreds at once is told to wait instead of starving everyone else's.
"""

from __future__ import annotations

import asyncio

from gateway.errors import RateLimited


class ReplySlots:
    def __init__(self, per_user: int | None) -> None:
        self._per_user = per_user
        self._held: dict[str, int] = {}
        self._total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def take(self, user_id: str, count: int = 1) -> None:
        held = self._held.get(user_id, 0)
        if self._per_user is not None and held + count > self._per_user:
            raise RateLimited(
                f"{held} of your replies are running (at most {self._per_user} at once): "
                "wait for one to finish, or stop one",
                retry_after_s=1,
            )
        self._held[user_id] = held + count
        self._total += count
        self._idle.clear()

    def release(self, user_id: str, count: int = 1) -> None:
        held = self._held.get(user_id, 0)
        left = held - count
        if left > 0:
            self._held[user_id] = left
        else:
            self._held.pop(user_id, None)
        self._total -= min(held, count)
        if self._total <= 0:
            self._idle.set()

    def held(self, user_id: str) -> int:
        return self._held.get(user_id, 0)

    def total(self) -> int:
        """Every reply running in this replica, whoever's."""
        return self._total

    async def idle(self) -> None:
        """Until no reply runs here (a stopping replica waits for this)."""
        await self._idle.wait()
