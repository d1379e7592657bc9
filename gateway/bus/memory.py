"""The embedded bus and registry: one process, no other replica to share with.

`LocalBus` carries nothing (the hub has delivered every event already);
`LocalReplicas` is a registry of one: no other replica runs tasks, holds
sessions, has connections or hears commands, and none ever dies under us;
`LocalJournal` keeps replies' events in rings in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from gateway.bus import (
    Deliver,
    KeptReply,
    LoadContent,
    OnControl,
    OnOrphan,
    Replay,
    Seat,
    TaskInfo,
    started_ms,
)
from gateway.events import (
    AnyReplyEvent,
    Event,
    ReasoningDelta,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    TextDelta,
)


class LocalLocks:
    """An `asyncio.Lock` per key while anyone holds or waits for it (then dropped:
    no lock outlives its last user)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)

    async def close(self) -> None:
        return None


class LocalBus:
    async def start(self, deliver: Deliver, load: LoadContent) -> None:
        return None

    async def close(self) -> None:
        return None

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        return None

    def crowded(self) -> bool:
        return False

    async def room(self) -> None:
        return None

    def watch(self, room: str) -> None:
        return None

    def unwatch(self, room: str) -> None:
        return None

    async def watching(self, rooms: Iterable[str]) -> None:
        return None

    def problem(self) -> str | None:
        return None


class LocalReplicas:
    """Only this replica: nothing remote to list, ask or tell."""

    def __init__(self) -> None:
        self.replica_id = uuid.uuid4().hex[:12]

    async def start(self, on_control: OnControl, on_orphan: OnOrphan) -> None:
        return None

    async def close(self) -> None:
        return None

    def problem(self) -> str | None:
        return None

    def broadcast(self, message: dict[str, Any]) -> None:
        return None

    def task_started(self, task: TaskInfo) -> None:
        return None

    def task_ended(self, task_id: str) -> None:
        return None

    async def claim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> str | None:
        return None

    def unclaim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        return None

    async def remote_tasks(self, *, strict: bool = False) -> list[TaskInfo]:
        return []

    async def claimed_elsewhere(self) -> set[tuple[str, str]]:
        return set()

    def session_opened(self, sid: str) -> None:
        return None

    def session_closed(self, sid: str) -> None:
        return None

    async def session_replica(self, sid: str) -> str | None:
        return None

    def presence_changed(self, seats: list[Seat]) -> None:
        return None

    def remote_seats(self) -> list[Seat]:
        return []

    def remote_counts(self) -> dict[str, int]:
        return {}


# What the finished replies kept for resuming may hold, in characters of their text
# (each event counted EVENT_COST more): past it the longest-ended go first.
MAX_ENDED_CHARS = 64 * 1024 * 1024
EVENT_COST = 64


# A kept delta (nearly every event a buffer holds) as a tuple of its fields, its
# kind first: a tuple of strings, numbers and None leaves the garbage collector's
# view at the first collection that sees it, so the deltas of every reply kept
# for resuming are never walked by a full collection, and a delta's object dies
# once it is delivered.  Kept as objects, hundreds of thousands of deltas made
# every full collection a pause of tens of milliseconds for every reply
# (bench/RESULTS.md).  The other events, a few a reply, are kept as they are.
Packed = tuple[bool, str | None, str, int, str, int | None]


def _packed(event: AnyReplyEvent) -> AnyReplyEvent | Packed:
    kind = type(event)
    if kind is TextDelta or kind is ReasoningDelta:
        delta: TextDelta | ReasoningDelta = event  # type: ignore[assignment]
        return (
            kind is TextDelta,
            delta.chat_id,
            delta.message_id,
            delta.seq,
            delta.text,
            delta.item,
        )
    return event


def _unpacked(kept: AnyReplyEvent | Packed) -> AnyReplyEvent:
    if type(kept) is not tuple:
        return kept  # type: ignore[return-value]
    is_text, chat_id, message_id, seq, text, item = kept
    kind = TextDelta if is_text else ReasoningDelta
    return kind(chat_id, message_id, seq, text, item)


def _size(events: Iterable[AnyReplyEvent | Packed]) -> int:
    size = 0
    for event in events:
        if type(event) is tuple:
            size += EVENT_COST + len(event[4])
        else:
            size += EVENT_COST + len(
                getattr(event, "text", "") or getattr(event, "content", "") or ""
            )
    return size


class _Kept:
    __slots__ = ("chat_id", "ended_ms", "events", "size", "started_ms", "user_id")

    def __init__(self, user_id: str, chat_id: str, max_events: int, started_ms: int) -> None:
        self.user_id = user_id
        self.chat_id = chat_id
        self.events: deque[AnyReplyEvent | Packed] = deque(maxlen=max_events)
        self.started_ms = started_ms
        self.ended_ms: int | None = None
        self.size = 0  # counted once the reply ends


class LocalJournal:
    """The replay buffer in this process: a ring of at most `max_events` events per
    reply, kept `ttl_s` after the reply ends; at most `max_replies` replies and
    `max_ended_chars` of finished ones (the longest-ended go first).
    `max_events=0` keeps nothing."""

    lag_s = 0.0

    def __init__(
        self,
        max_events: int,
        ttl_s: float,
        max_replies: int = 10_000,
        max_ended_chars: int = MAX_ENDED_CHARS,
    ) -> None:
        self._max_events = max_events
        self._ttl_s = ttl_s
        self._max_replies = max_replies
        self._max_ended_chars = max_ended_chars
        self._ended_chars = 0
        self._kept: dict[tuple[str, str], _Kept] = {}
        # Ended replies in the order they ended, with when each may go.
        self._ended: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._by_user: dict[str, set[tuple[str, str]]] = {}

    def record(self, user_id: str, event: Event) -> None:
        if not self._max_events or not isinstance(event, ReplyEvent) or event.chat_id is None:
            return
        key = (user_id, event.message_id)
        kept = self._kept.get(key)
        if kept is None or (kept.ended_ms is not None and event.seq == 0):
            kept = self._begin(key, event.chat_id, started_ms(event))
        kept.events.append(_packed(event))
        if isinstance(event, ReplyFinished | ReplyFailed):
            kept.ended_ms = int(time.time() * 1000)
            if key not in self._ended:
                kept.size = _size(kept.events)
                self._ended_chars += kept.size
            self._ended[key] = time.monotonic() + self._ttl_s
            self._ended.move_to_end(key)
            while self._ended_chars > self._max_ended_chars and len(self._ended) > 1:
                self._forget(next(iter(self._ended)))

    def _begin(self, key: tuple[str, str], chat_id: str, started: int) -> _Kept:
        self._sweep()
        self._forget(key)
        while len(self._kept) >= self._max_replies and self._ended:
            self._forget(next(iter(self._ended)))
        kept = self._kept[key] = _Kept(key[0], chat_id, self._max_events, started)
        self._by_user.setdefault(key[0], set()).add(key)
        return kept

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._ended:
            key, until = next(iter(self._ended.items()))
            if until > now:
                return
            self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        if self._ended.pop(key, None) is not None:
            self._ended_chars -= self._kept[key].size
        if self._kept.pop(key, None) is None:
            return
        keys = self._by_user.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[key[0]]

    async def read(self, user_id: str, message_id: str) -> Replay | None:
        self._sweep()
        kept = self._kept.get((user_id, message_id))
        if kept is None:
            return None
        return Replay(kept.chat_id, kept.user_id, [_unpacked(event) for event in kept.events])

    async def replies_of(self, user_id: str) -> list[KeptReply]:
        self._sweep()
        found = []
        for key in self._by_user.get(user_id, ()):
            kept = self._kept[key]
            found.append(KeptReply(kept.chat_id, key[1], kept.started_ms, kept.ended_ms))
        return found

    async def close(self) -> None:
        self._kept.clear()
        self._ended.clear()
        self._by_user.clear()
        self._ended_chars = 0
