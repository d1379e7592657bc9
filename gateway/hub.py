"""Delivers events to the connections subscribed to a room, in this process.

Rooms are strings: `user:<id>` (every connection of a user), `chat:<id>`,
`reply:<message_id>` (one reply, for the HTTP response that started it).
Each subscription has a bounded `Outbox`.  When a consumer falls behind,
consecutive `TextDelta`s of the same reply are merged into one (text is
concatenable), so a slow client gets bigger chunks instead of unbounded
memory; a consumer still behind when the outbox is full of other events is
marked overflowed and must be disconnected (it can reconnect).

Publishing never blocks and never awaits: a slow consumer cannot slow the
reply or the other consumers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

from gateway.events import Event, TextDelta


class Overflow(Exception):
    """The consumer fell further behind than its outbox allows."""


class Outbox:
    def __init__(self, max_events: int) -> None:
        self._events: deque[Event] = deque()
        self._max = max_events
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.rooms: set[str] = set()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: Event) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._events) >= self._max:
            last = self._events[-1]
            if (
                isinstance(event, TextDelta)
                and isinstance(last, TextDelta)
                and last.message_id == event.message_id
            ):
                # Merge into the newest queued delta; it keeps the later seq.
                self._events[-1] = replace(last, text=last.text + event.text, seq=event.seq)
                return
            self.overflowed = True
        else:
            self._events.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def get(self) -> Event | None:
        """The next event; None once closed and drained. Raises Overflow."""
        while not self._events:
            if self.overflowed:
                raise Overflow("consumer fell behind")
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class Hub:
    def __init__(self, outbox_max_events: int) -> None:
        self._rooms: dict[str, set[Outbox]] = {}
        self._outbox_max_events = outbox_max_events

    def subscribe(self, rooms: Iterable[str]) -> Outbox:
        outbox = Outbox(self._outbox_max_events)
        for room in rooms:
            self.join(outbox, room)
        return outbox

    def join(self, outbox: Outbox, room: str) -> None:
        self._rooms.setdefault(room, set()).add(outbox)
        outbox.rooms.add(room)

    def leave(self, outbox: Outbox, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(outbox)
            if not members:
                del self._rooms[room]
        outbox.rooms.discard(room)

    def unsubscribe(self, outbox: Outbox) -> None:
        outbox.close()
        for room in list(outbox.rooms):
            self.leave(outbox, room)

    def publish(self, rooms: Iterable[str], event: Event) -> None:
        """Deliver once to every outbox in any of `rooms` (an outbox in two rooms gets one copy)."""
        seen: set[int] = set()
        for room in rooms:
            for outbox in self._rooms.get(room, ()):
                if id(outbox) not in seen:
                    seen.add(id(outbox))
                    outbox.put(event)

    def room_sizes(self) -> dict[str, int]:
        return {room: len(members) for room, members in self._rooms.items()}
