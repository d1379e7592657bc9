"""Items each due an interval after it was queued, and one timer for all of them: the
socket transports' pings (`socketio_engine.py` for Engine.IO's, `websocket_pings.py`
for the raw WebSocket's).  A timer each costs about 0.5 KB under uvloop, a queue
entry about 0.1 (bench/RESULTS.md).  Every item waits the same interval, so the
order they were queued in is the order they are due::

    add(item)     due `interval_s` from now
    _fire         each item due, in turn: `visit(item)`, queued again (due an
                  interval on) when it returns True; a visit that raises is logged
                  and not queued again (one item's bug stops no other's)
    keep(alive)   only the items `alive` says, now (a sweep of the departed)
    close()       no more visits
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# An item this close to its time is visited with the ones due (a timer may fire
# that early).
EARLY_S = 0.002


class DueQueue(Generic[T]):
    __slots__ = ("_due", "_timer", "_visit", "_what", "interval_s")

    def __init__(self, interval_s: float, visit: Callable[[T], bool], what: str) -> None:
        self.interval_s = interval_s
        self._visit = visit
        self._what = what  # for the log
        self._due: deque[tuple[float, T]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval_s
        self._due.append((due, item))
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire, loop)

    def keep(self, alive: Callable[[T], bool]) -> None:
        self._due = deque(entry for entry in self._due if alive(entry[1]))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due, now = self._due, loop.time()
        again = now + self.interval_s
        while due and due[0][0] <= now + EARLY_S:
            item = due.popleft()[1]
            try:
                if self._visit(item):
                    due.append((again, item))
            except Exception:
                log.exception("%s failed", self._what)
        if due:
            self._timer = loop.call_at(due[0][0], self._fire, loop)
