"""Readiness: what a reply needs — the bus (Redis, when replicas share it), the
store, each configured upstream's model list — checked once for everyone
asking at the same time (single-flight) and kept for `READY_CACHE_S`, so a
flood of `/ready` costs the model servers one probe every few seconds, not
one per call.  What a caller may see of the result is the route's
(`gateway/api/health.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.bus import Bus
from gateway.errors import GatewayError
from gateway.store import Pingable
from gateway.upstream import Upstream

READY_CHECK_TIMEOUT_S = 5.0
# How long one round of checks answers every `/ready` (a few seconds: a load
# balancer still sees a failure within its own interval).
READY_CACHE_S = 2.0


@dataclass(frozen=True, slots=True)
class Checked:
    """One round of checks: each check's "ok" or what failed, unmasked."""

    checks: dict[str, str]
    upstreams: dict[str, str]  # check name → the server's (unmasked) name
    at: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return all(result == "ok" for result in self.checks.values())


class Readiness:
    """The checks, run once for every caller waiting at the same time (single-flight)
    and their result kept for `ttl_s`; a result per kind (with or without upstreams)."""

    def __init__(
        self,
        bus: Bus,
        store: Pingable,
        upstreams: Sequence[Upstream],
        ttl_s: float = READY_CACHE_S,
    ) -> None:
        self._bus, self._store, self._upstreams = bus, store, upstreams
        self._ttl_s = ttl_s
        self._results: dict[bool, Checked] = {}
        self._running: dict[bool, asyncio.Task[Checked]] = {}
        # Set when the replica is stopping: how many replies it still finishes.
        self._draining: Callable[[], int] | None = None

    def drain(self, replies_running: Callable[[], int]) -> None:
        """The replica is stopping: not ready from now on (the balancer takes it out of
        rotation while its running replies finish)."""
        self._draining = replies_running

    async def checked(self, upstreams: bool) -> Checked:
        if self._draining is not None:
            left = self._draining()
            return Checked({"replica": f"stopping: {left} replies finishing"}, {})
        cached = self._results.get(upstreams)
        if cached is not None and time.monotonic() - cached.at < self._ttl_s:
            return cached
        task = self._running.get(upstreams)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._check(upstreams))
            self._running[upstreams] = task
            task.add_done_callback(lambda done: self._finished(upstreams, done))
        # Shielded: a caller that goes away does not cancel the others' round.
        return await asyncio.shield(task)

    def _finished(self, upstreams: bool, task: asyncio.Task[Checked]) -> None:
        self._running.pop(upstreams, None)
        if not task.cancelled() and task.exception() is None:
            self._results[upstreams] = task.result()

    async def _check(self, with_upstreams: bool) -> Checked:
        checks: dict[str, str] = {"bus": self._bus.problem() or "ok"}
        try:
            await asyncio.wait_for(self._store.ping(), READY_CHECK_TIMEOUT_S)
            checks["store"] = "ok"
        except Exception as exc:  # any failure of the database is "not ready"
            checks["store"] = str(exc) or type(exc).__name__
        return await _with_upstreams(checks, self._upstreams if with_upstreams else [])


async def _with_upstreams(checks: dict[str, str], upstreams: Sequence[Upstream]) -> Checked:
    names = {f"upstream {index}": u.name for index, u in enumerate(upstreams, start=1)}
    # All at once: one hanging server costs one timeout, not one per server.
    results = await asyncio.gather(*(_probe(upstream) for upstream in upstreams))
    checks.update(zip(names, results, strict=True))
    return Checked(checks, names)


async def _probe(upstream: Upstream) -> str:
    try:
        await asyncio.wait_for(upstream.list_models(), READY_CHECK_TIMEOUT_S)
    except (GatewayError, TimeoutError) as exc:
        return str(exc) or "timed out"
    return "ok"
