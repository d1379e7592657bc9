"""A subscription's bounded queue of events, between the publisher (`hub.py`) and
the connection that consumes them.

Theory of operation, for one outbox::

    publish ──put()──▶ deliver(e) ── True: the consumer took it at once (the fast path:
                 │                  nothing queued, nothing in flight, consumer not
                 │                  backed up; no task switch per event)
                 └ False/none ─▶ [e1 e2 … en]  ──batch()──▶ the connection's writer,
                                   (take(): the same,      which calls done() after
                                    without waiting)
                        │
                        ├ full (max_events): a TextDelta/ReasoningDelta is merged
                        │   into the newest queued delta of the same reply and kind
                        │   (text is concatenable), so a slow client gets bigger
                        │   chunks, not more of them
                        └ text queued > max_chars (a reply's text, a workspace
                          event's data), or full of events that cannot
                            merge:
                              a reply's event, and the connection can be paced
                              (`on_behind`): *behind* — that reply's queued events
                              are dropped and it is diverted; its rest comes from
                              the replay buffer through a follower (`follow.py`)
                              that puts each event only when there is room
                              (`room_for`), so a client that reads as fast as its
                              network allows gets the whole reply, never dropped
                              for a model faster than its network
                              otherwise: overflowed; the connection must be
                              dropped (its client reconnects and reloads the chat)

Publishing never blocks and never awaits: a slow consumer cannot slow the
reply or the other consumers.

While a connection resumes a reply, its outbox *diverts* that reply: the
events its rooms bring are dropped, and the follower puts the reply's events
in order, each once (`resumed=True`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace

from gateway.edge.metrics import HOT
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    TextDelta,
    WorkspaceEvent,
)

# What a connection's followers have put, per reply: kept for this many replies.
_MAX_RESUMED_REPLIES = 64
_ENDED = 2**62


class Overflow(Exception):
    """The consumer fell further behind than its outbox allows."""


def _text_size(event: Event) -> int:
    if isinstance(event, TextDelta | ReasoningDelta):
        return len(event.text)
    return event.size if isinstance(event, WorkspaceEvent) else 0


class _Merged:
    """Deltas merged while the outbox is full: pieces kept in a list, joined once when
    taken (joining on every merge would copy the growing text each time)."""

    __slots__ = ("first_seq", "last", "pieces")

    def __init__(self, first: TextDelta | ReasoningDelta) -> None:
        self.first_seq = first.seq
        self.last = first
        self.pieces = [first.text]

    def event(self) -> Event:
        # The later seq: a client that resumes asks for what follows it.
        return replace(self.last, text="".join(self.pieces))


def _taken(item: Event | _Merged) -> Event:
    return item.event() if isinstance(item, _Merged) else item


# What an outbox holds while nothing is queued: most connections are idle, and an
# empty deque costs about 700 bytes (its first block), so the queue is made by the
# first `put` that must queue and let go once it is drained (bench_idle's figures).
_NOTHING: tuple[()] = ()


class Outbox:
    # One per connection, most of them idle: slots, and nothing made until needed.
    __slots__ = (
        "_chars",
        "_deliver",
        "_diverted",
        "_events",
        "_in_flight",
        "_max",
        "_max_chars",
        "_merge",
        "_on_overflow",
        "_resumed_upto",
        "_stall_s",
        "_starts",
        "_took",
        "_waiter",
        "closed",
        "on_behind",
        "overflowed",
        "rooms",
    )

    def __init__(
        self,
        max_events: int,
        max_chars: int | None = None,
        on_overflow: Callable[[], None] | None = None,
        deliver: Callable[[Event], bool] | None = None,
        merge: bool = True,
        stall_s: float | None = None,
    ) -> None:
        self._events: deque[Event | _Merged] | tuple[()] = _NOTHING
        # False: a full outbox overflows rather than merge (a follower counts seqs).
        self._merge = merge
        # Replies being resumed into this outbox (how many followers each): their
        # events from the rooms are dropped; the highest seq followers put for each
        # (`_ENDED` once its end was put), so a second follower never repeats one.
        # Each made when first needed.
        self._diverted: dict[str, int] | None = None
        self._resumed_upto: dict[str, int] | None = None
        # While a connection opens (`note_starts` until `stop_noting`): the replies
        # whose start came in, which it then has whole from its rooms.
        self._starts: set[str] | None = None
        # Tried first when nothing is queued or in flight; False means "not
        # now" (the consumer is backed up) and the event is queued instead.
        self._deliver = deliver
        self._in_flight = False
        self._max = max_events
        self._max_chars = max_chars
        self._chars = 0
        # What the consumer awaits while nothing is queued (one consumer per outbox;
        # a bare future, not an Event: that costs about 700 bytes per idle connection).
        self._waiter: asyncio.Future[None] | None = None
        # Set whenever the consumer takes events (and at the end): a paced follower
        # waits on it for room.  Made when one first waits (an Event costs about
        # 700 bytes, and most connections never fall behind).
        self._took: asyncio.Event | None = None
        # How long a follower waits for room with nothing taken before the consumer
        # counts as stuck (and overflows); None: forever.
        self._stall_s = stall_s
        self._on_overflow = on_overflow
        # A reply's event that does not fit: (that event, the last seq of the reply the
        # consumer was handed). The transport then follows the reply from the buffer.
        self.on_behind: Callable[[ReplyEvent, int], None] | None = None
        self.overflowed = False
        self.closed = False
        # The rooms it is in (`Hub.join`), a tuple: most are in one or two.
        self.rooms: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def queued_chars(self) -> int:
        return self._chars

    def note_starts(self) -> None:
        """From now on, note the replies whose first event comes in: a
        catch-up of the user's running replies skips them, as the rooms bring them
        whole (caught up as well, the events between its read of the replay buffer
        and its divert would come twice)."""
        self._starts = set()

    def stop_noting(self) -> set[str]:
        """The replies whose start came in since `note_starts`; noting stops."""
        started, self._starts = self._starts, None
        return started or set()

    def divert(self, message_id: str) -> None:
        """From now on, events of this reply come only through `put(…, resumed=True)`;
        the copies already queued go too (the follower sends them, in order).  Each
        `divert` is ended by one `undivert`."""
        if self._diverted is None:
            self._diverted = {}
        self._diverted[message_id] = self._diverted.get(message_id, 0) + 1
        kept = [
            item
            for item in self._events
            if getattr(item.last if isinstance(item, _Merged) else item, "message_id", None)
            != message_id
        ]
        if len(kept) != len(self._events):
            self._events = deque(kept) if kept else _NOTHING
            self._chars = sum(_text_size(_taken(item)) for item in kept)

    @contextlib.contextmanager
    def held(self, message_ids: Iterable[str]) -> Iterator[None]:
        """Diverted while a resume is being set up (the rooms' copies must not reach
        the client before the follower takes over)."""
        held = list(message_ids)
        for message_id in held:
            self.divert(message_id)
        try:
            yield
        finally:
            for message_id in held:
                self.undivert(message_id)

    def undivert(self, message_id: str) -> None:
        if self._diverted is None:
            return
        left = self._diverted.get(message_id, 0) - 1
        if left > 0:
            self._diverted[message_id] = left
        else:
            # The last follower is done: a later resume is served in full again.
            self._diverted.pop(message_id, None)
            if self._resumed_upto is not None:
                self._resumed_upto.pop(message_id, None)

    def put(self, event: Event, resumed: bool = False) -> None:
        if self.overflowed or self.closed:
            return
        if self._starts is not None and type(event) is ReplyStarted:
            self._starts.add(event.message_id)
        if (
            self._diverted
            and isinstance(event, ReplyEvent)
            and event.message_id in self._diverted
            and (not resumed or not self._fresh(event))
        ):
            return
        if (
            self._deliver is not None
            and not self._events
            and not self._in_flight
            and self._deliver(event)
        ):
            return
        size = _text_size(event)
        if not resumed and self._max_chars is not None and self._chars + size > self._max_chars:
            self._no_room(event)
            return
        if len(self._events) >= self._max:
            if not self._merge:
                self._overflow()
                return
            queued = self._queue()
            tail = queued[-1]
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
                queued[-1] = merged
                self._chars += size
                HOT.merges += 1
                return
            if resumed:
                self._overflow()
            else:
                self._no_room(event)
            return
        self._queue().append(event)
        self._chars += size
        self._wake()

    def _queue(self) -> deque[Event | _Merged]:
        """The queue, made if nothing is queued."""
        if isinstance(self._events, deque):
            return self._events
        queued: deque[Event | _Merged] = deque()
        self._events = queued
        return queued

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fresh(self, event: ReplyEvent) -> bool:
        """A follower's event the client does not have yet: a second follower of the
        same reply (a resume after a catch-up) goes on from the first, not again;
        after a reply's end, nothing more of it."""
        message_id = event.message_id
        if self._resumed_upto is None:
            self._resumed_upto = {}
        upto = self._resumed_upto.pop(message_id, -1)
        fresh = upto != _ENDED and (isinstance(event, ReplySnapshot) or event.seq > upto)
        if isinstance(event, ReplyFinished | ReplyFailed) and upto != _ENDED:
            fresh, upto = True, _ENDED
        elif fresh:
            upto = max(upto, event.seq)
        # Newest last; the oldest forgotten past a bound.
        self._resumed_upto[message_id] = upto
        if len(self._resumed_upto) > _MAX_RESUMED_REPLIES:
            del self._resumed_upto[next(iter(self._resumed_upto))]
        return fresh

    def _no_room(self, event: Event) -> None:
        """Behind on a reply when the connection can be paced; overflowed otherwise."""
        if self.on_behind is None or not isinstance(event, ReplyEvent) or event.chat_id is None:
            self._overflow()
            return
        message_id = event.message_id
        after = event.seq - 1
        for item in self._events:
            queued = item.last if isinstance(item, _Merged) else item
            if isinstance(queued, ReplyEvent) and queued.message_id == message_id:
                # The oldest queued event of the reply: the consumer has all before it.
                after = (item.first_seq if isinstance(item, _Merged) else queued.seq) - 1
                break
        self.divert(message_id)  # its queued events go; the follower brings them
        HOT.paced += 1
        self.on_behind(event, after)

    def fits(self, event: Event) -> bool:
        """Room for a follower's event: the queue at most half full (of events and of
        text); an event bigger than that once the queue is empty."""
        if len(self._events) >= max(1, self._max // 2):
            return False
        if self._max_chars is None or not self._chars:
            return True
        return self._chars + _text_size(event) <= self._max_chars // 2

    async def room_for(self, event: Event) -> None:
        """Until `fits(event)`, or the outbox is closed or overflowed; a consumer that
        takes nothing for `stall_s` meanwhile is stuck, and overflows it."""
        while not self.fits(event) and not (self.closed or self.overflowed):
            if self._took is None:
                self._took = asyncio.Event()
            self._took.clear()
            try:
                await asyncio.wait_for(self._took.wait(), self._stall_s)
            except TimeoutError:
                self._overflow()

    def _took_set(self) -> None:
        if self._took is not None:
            self._took.set()

    def _overflow(self) -> None:
        if self.overflowed:
            return  # several followers may find it stuck at once: dropped once
        self.overflowed = True
        HOT.slow_disconnects += 1
        self._wake()
        self._took_set()
        if self._on_overflow is not None:
            self._on_overflow()

    def close(self) -> None:
        self.closed = True
        self._wake()
        self._took_set()

    async def _wait(self) -> bool:
        """Wait for events; False once closed and drained. Raises Overflow."""
        while not self._events:
            if self.overflowed:
                raise Overflow("consumer fell behind")
            if self.closed:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    async def get(self) -> Event | None:
        """The next event; None once closed and drained. Raises Overflow."""
        if not await self._wait():
            return None
        queued = self._queue()
        event = _taken(queued.popleft())
        if not queued:
            self._events = _NOTHING
        self._chars -= _text_size(event)
        self._took_set()
        return event

    async def batch(self) -> list[Event]:
        """Every queued event at once (one wakeup per burst); [] once closed. Raises Overflow.

        Until `done()`, the batch is in flight: later events queue behind it
        rather than overtake it through `deliver`.
        """
        if not await self._wait():
            return []
        return self.take()

    def take(self) -> list[Event]:
        """What `batch` returns, without waiting: every queued event ([] if none), in
        flight until `done()`."""
        if not self._events:
            return []
        events = [_taken(item) for item in self._events]
        self._events = _NOTHING
        self._chars = 0
        self._in_flight = True
        self._took_set()
        return events

    def done(self) -> None:
        """The consumer has handed on the last batch."""
        self._in_flight = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event
