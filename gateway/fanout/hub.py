"""Delivers events to the connections subscribed to a room, in this process.

Rooms are strings: `user:<id>` (every connection of a user), `chat:<id>`,
`reply:<chat id>/<message id>` (one reply, for the HTTP response that
started it).  Each subscription has a bounded `Outbox`.

Theory of operation, for one outbox::

    publish ──put()──▶ deliver(e) ── True: the consumer took it at once (the fast path:
                 │                  nothing queued, nothing in flight, consumer not
                 │                  backed up; no task switch per event)
                 └ False/none ─▶ [e1 e2 … en]  ──batch()──▶ the connection's writer,
                                                           which calls done() after
                        │
                        ├ full (max_events): a TextDelta/ReasoningDelta is merged
                        │   into the newest queued delta of the same reply and kind
                        │   (text is concatenable), so a slow client gets bigger
                        │   chunks, not more of them
                        └ text queued > max_chars, or full of events that cannot
                            merge: overflowed; the connection must be dropped
                            (its client reconnects and reloads the chat)

Publishing never blocks and never awaits: a slow consumer cannot slow the
reply or the other consumers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace

from gateway.bus import Bus, is_local
from gateway.bus.memory import LocalBus
from gateway.events import Event, ReasoningDelta, ReplyFailed, ReplyFinished, TextDelta


class Overflow(Exception):
    """The consumer fell further behind than its outbox allows."""


def _text_size(event: Event) -> int:
    return len(event.text) if isinstance(event, TextDelta | ReasoningDelta) else 0


class _Merged:
    """Deltas merged while the outbox is full: pieces kept in a list, joined once when
    taken (joining on every merge would copy the growing text each time)."""

    __slots__ = ("last", "pieces")

    def __init__(self, first: TextDelta | ReasoningDelta) -> None:
        self.last = first
        self.pieces = [first.text]

    def event(self) -> Event:
        # The later seq: a client that resumes asks for what follows it.
        return replace(self.last, text="".join(self.pieces))


def _taken(item: Event | _Merged) -> Event:
    return item.event() if isinstance(item, _Merged) else item


class Outbox:
    def __init__(
        self,
        max_events: int,
        max_chars: int | None = None,
        on_overflow: Callable[[], None] | None = None,
        deliver: Callable[[Event], bool] | None = None,
    ) -> None:
        self._events: deque[Event | _Merged] = deque()
        # Tried first when nothing is queued or in flight; False means "not
        # now" (the consumer is backed up) and the event is queued instead.
        self._deliver = deliver
        self._in_flight = False
        self._max = max_events
        self._max_chars = max_chars
        self._chars = 0
        self._wakeup = asyncio.Event()
        self._on_overflow = on_overflow
        self.overflowed = False
        self.closed = False
        self.rooms: set[str] = set()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def queued_chars(self) -> int:
        return self._chars

    def put(self, event: Event) -> None:
        if self.overflowed or self.closed:
            return
        if (
            self._deliver is not None
            and not self._events
            and not self._in_flight
            and self._deliver(event)
        ):
            return
        size = _text_size(event)
        if self._max_chars is not None and self._chars + size > self._max_chars:
            self._overflow()
            return
        if len(self._events) >= self._max:
            tail = self._events[-1]
            last = tail.last if isinstance(tail, _Merged) else tail
            if (
                isinstance(event, TextDelta | ReasoningDelta)
                and isinstance(last, TextDelta | ReasoningDelta)
                and type(last) is type(event)
                and last.message_id == event.message_id
                and last.chat_id == event.chat_id
            ):
                # Merge into the newest queued delta of the same reply and kind.
                merged = tail if isinstance(tail, _Merged) else _Merged(last)
                merged.pieces.append(event.text)
                merged.last = event
                self._events[-1] = merged
                self._chars += size
                return
            self._overflow()
            return
        self._events.append(event)
        self._chars += size
        self._wakeup.set()

    def _overflow(self) -> None:
        self.overflowed = True
        self._wakeup.set()
        if self._on_overflow is not None:
            self._on_overflow()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def _wait(self) -> bool:
        """Wait for events; False once closed and drained. Raises Overflow."""
        while not self._events:
            if self.overflowed:
                raise Overflow("consumer fell behind")
            if self.closed:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def get(self) -> Event | None:
        """The next event; None once closed and drained. Raises Overflow."""
        if not await self._wait():
            return None
        event = _taken(self._events.popleft())
        self._chars -= _text_size(event)
        return event

    async def batch(self) -> list[Event]:
        """Every queued event at once (one wakeup per burst); [] once closed. Raises Overflow.

        Until `done()`, the batch is in flight: later events queue behind it
        rather than overtake it through `deliver`.
        """
        if not await self._wait():
            return []
        events = [_taken(item) for item in self._events]
        self._events.clear()
        self._chars = 0
        self._in_flight = True
        return events

    def done(self) -> None:
        """The consumer has handed on the last batch."""
        self._in_flight = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class Hub:
    """Rooms of this process's connections; other replicas' through `bus`."""

    def __init__(
        self,
        outbox_max_events: int,
        outbox_max_chars: int | None = None,
        bus: Bus | None = None,
    ) -> None:
        self._rooms: dict[str, set[Outbox]] = {}
        self._outbox_max_events = outbox_max_events
        self._outbox_max_chars = outbox_max_chars
        self.bus: Bus = bus if bus is not None else LocalBus()

    def subscribe(
        self,
        rooms: Iterable[str],
        on_overflow: Callable[[], None] | None = None,
        deliver: Callable[[Event], bool] | None = None,
    ) -> Outbox:
        outbox = Outbox(self._outbox_max_events, self._outbox_max_chars, on_overflow, deliver)
        for room in rooms:
            self.join(outbox, room)
        return outbox

    def join(self, outbox: Outbox, room: str) -> None:
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = set()
            if not is_local(room):
                self.bus.watch(room)
        members.add(outbox)
        outbox.rooms.add(room)

    def leave(self, outbox: Outbox, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(outbox)
            if not members:
                del self._rooms[room]
                if not is_local(room):
                    self.bus.unwatch(room)
        outbox.rooms.discard(room)

    async def watching(self, rooms: Iterable[str]) -> None:
        """Until other replicas' events for these rooms arrive here too."""
        await self.bus.watching([room for room in rooms if not is_local(room)])

    def unsubscribe(self, outbox: Outbox) -> None:
        outbox.close()
        for room in list(outbox.rooms):
            self.leave(outbox, room)

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        """To every member of `rooms`, here and on the other replicas."""
        self.deliver(rooms, event)
        self.bus.publish(rooms, event)

    def deliver(self, rooms: Iterable[str], event: Event) -> None:
        """Once to every outbox here in any of `rooms` (an outbox in two rooms gets one copy)."""
        seen: set[int] = set()
        for room in rooms:
            for outbox in self._rooms.get(room, ()):
                if id(outbox) not in seen:
                    seen.add(id(outbox))
                    outbox.put(event)

    def room_sizes(self) -> dict[str, int]:
        return {room: len(members) for room, members in self._rooms.items()}


async def until_finished(outbox: Outbox) -> AsyncGenerator[Event, None]:
    """One reply's events from an outbox that follows it, ending with its
    ReplyFinished or ReplyFailed (or when the outbox overflows or closes)."""
    try:
        while (event := await outbox.get()) is not None:
            yield event
            if isinstance(event, ReplyFinished | ReplyFailed):
                return
    except Overflow:
        return
