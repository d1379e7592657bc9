"""Rooms and bounded outboxes: fan-out, ordering, merging when full, overflow, never blocking."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway import rooms
from gateway.bus.memory import LocalBus
from gateway.events import Event, ReasoningDelta, StatusChanged, TextDelta, WorkspaceEvent
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox, Overflow


def text(chars: str, seq: int = 0, message_id: str = "a1", chat_id: str = "c1") -> TextDelta:
    return TextDelta(chat_id=chat_id, message_id=message_id, seq=seq, text=chars)


def reasoning(chars: str, seq: int = 0, message_id: str = "a1") -> ReasoningDelta:
    return ReasoningDelta(chat_id="c1", message_id=message_id, seq=seq, text=chars)


def status(seq: int = 0, message_id: str = "a1") -> StatusChanged:
    return StatusChanged(
        chat_id="c1", message_id=message_id, seq=seq, description="searching", done=False
    )


class Counter:
    """An `on_overflow` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def drain(outbox: Outbox) -> list[Event]:
    """What a reader takes before the outbox reports overflow."""
    taken: list[Event] = []
    with pytest.raises(Overflow):
        while True:
            event = await outbox.get()
            assert event is not None, "an overflowed outbox ends with Overflow, not None"
            taken.append(event)
    return taken


async def test_publish_reaches_each_outbox_once() -> None:
    hub = Hub(outbox_max_events=8)
    in_both = hub.subscribe(["user:u1", "chat:c1"])
    in_user = hub.subscribe(["user:u1"])
    elsewhere = hub.subscribe(["user:u2"])
    event = text("hi")
    hub.publish(["user:u1", "chat:c1", "chat:nobody"], event)
    assert await in_both.batch() == [event]
    assert await in_user.batch() == [event]
    assert len(elsewhere) == 0


async def test_a_room_of_one_grows_and_shrinks_through_every_size() -> None:
    # A room of one member holds the outbox itself, a set from the second: every
    # step delivers to exactly the members, once, and joining twice is joining once.
    hub = Hub(outbox_max_events=8)
    first = hub.subscribe(["user:u1"])
    hub.join(first, "user:u1")
    assert hub.room_sizes() == {"user:u1": 1} and first.rooms == ("user:u1",)
    second, third = hub.subscribe(["user:u1"]), hub.subscribe(["user:u1", "chat:c1"])
    assert hub.room_sizes() == {"user:u1": 3, "chat:c1": 1}
    hub.publish(["user:u1", "chat:c1"], text("a"))
    assert (len(first), len(second), len(third)) == (1, 1, 1)
    hub.leave(second, "user:u1")
    hub.leave(second, "user:u1")  # not a member any more: nothing changes
    hub.unsubscribe(third)
    assert hub.room_sizes() == {"user:u1": 1}
    hub.publish(["user:u1"], text("b"))
    assert (len(first), len(second), len(third)) == (2, 1, 1)
    hub.leave(second, "user:u1")  # a room of one, not its member: nothing changes
    assert hub.room_sizes() == {"user:u1": 1}
    hub.unsubscribe(first)
    assert hub.room_sizes() == {} and first.rooms == ()
    hub.join(second, "user:u1")
    hub.publish(["user:u1"], text("c"))
    assert (len(first), len(second)) == (2, 2)


class WatchedBus(LocalBus):
    """The in-process bus, noting what the hub asks other replicas to send here."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def watch(self, room: str) -> None:
        self.calls.append(("watch", room))

    def unwatch(self, room: str) -> None:
        self.calls.append(("unwatch", room))


def test_a_room_is_watched_from_its_first_member_to_its_last_only() -> None:
    # However its members come and go (one, a set, one again), a shared room is
    # watched on the bus once when it is made and unwatched once when it empties;
    # a connection's own room (local) never.
    bus = WatchedBus()
    hub = Hub(outbox_max_events=8, bus=bus)
    first = hub.subscribe(["user:u1", rooms.connection("x")])
    second = hub.subscribe(["user:u1"])
    hub.leave(first, "user:u1")
    third = hub.subscribe(["user:u1"])
    assert bus.calls == [("watch", "user:u1")]
    hub.unsubscribe(second)
    hub.unsubscribe(third)
    assert bus.calls == [("watch", "user:u1"), ("unwatch", "user:u1")]
    hub.unsubscribe(first)
    hub.join(first, "user:u1")
    assert bus.calls[2:] == [("watch", "user:u1")] and hub.room_sizes() == {"user:u1": 1}


async def test_unsubscribe_leaves_every_room_and_empty_rooms_are_forgotten() -> None:
    hub = Hub(outbox_max_events=8)
    leaving = hub.subscribe(["user:u1", "chat:c1"])
    staying = hub.subscribe(["user:u1"])
    assert hub.room_sizes() == {"user:u1": 2, "chat:c1": 1}

    hub.unsubscribe(leaving)
    assert hub.room_sizes() == {"user:u1": 1}
    assert leaving.rooms == () and leaving.closed
    hub.publish(["user:u1", "chat:c1"], text("hi"))
    assert len(leaving) == 0 and len(staying) == 1
    assert await leaving.get() is None

    hub.unsubscribe(staying)
    assert hub.room_sizes() == {}


async def test_batch_takes_everything_queued_in_order_then_waits() -> None:
    hub = Hub(outbox_max_events=8)
    outbox = hub.subscribe(["chat:c1"])
    events: list[Event] = [status(0), text("a", 1), reasoning("b", 2), text("c", 3)]
    for event in events:
        hub.publish(["chat:c1"], event)
    assert outbox.queued_chars == 3
    assert await outbox.batch() == events
    assert len(outbox) == 0 and outbox.queued_chars == 0

    waiting = asyncio.create_task(outbox.batch())
    await asyncio.sleep(0.01)
    assert not waiting.done(), "an empty outbox waits for the next event"
    later = text("d", 4)
    hub.publish(["chat:c1"], later)
    assert await asyncio.wait_for(waiting, 1) == [later]


async def test_get_returns_none_after_close_once_drained() -> None:
    outbox = Outbox(max_events=8)
    first, second = text("a", 0), text("b", 1)
    outbox.put(first)
    outbox.put(second)
    outbox.close()
    outbox.put(text("after close", 2))
    assert await outbox.get() == first
    assert await outbox.get() == second
    assert await outbox.get() is None
    assert await outbox.batch() == []
    assert [event async for event in outbox] == []


async def test_close_wakes_a_waiting_reader() -> None:
    outbox = Outbox(max_events=8)
    waiting = asyncio.create_task(outbox.get())
    await asyncio.sleep(0.01)
    outbox.close()
    assert await asyncio.wait_for(waiting, 1) is None


# What happens to `incoming` when the newest queued event is `newest` and the
# outbox is full: merged into it, or overflow.
FULL_OUTBOX = [
    pytest.param(text("ab", 1), text("cd", 2), True, id="text into text"),
    pytest.param(reasoning("ab", 1), reasoning("cd", 2), True, id="reasoning into reasoning"),
    pytest.param(text("ab", 1), reasoning("cd", 2), False, id="reasoning after text"),
    pytest.param(reasoning("ab", 1), text("cd", 2), False, id="text after reasoning"),
    pytest.param(text("ab", 1), text("cd", 2, message_id="a2"), False, id="another message"),
    pytest.param(text("ab", 1), text("cd", 2, chat_id="c2"), False, id="another chat"),
    pytest.param(text("ab", 1), status(2), False, id="not a delta"),
    pytest.param(status(1), text("cd", 2), False, id="newest queued is not a delta"),
]


@pytest.mark.parametrize(("newest", "incoming", "merges"), FULL_OUTBOX)
async def test_a_full_outbox_merges_deltas_of_the_same_reply_and_kind(
    newest: Event, incoming: Event, merges: bool
) -> None:
    overflows = Counter()
    outbox = Outbox(max_events=2, on_overflow=overflows)
    oldest = status(0)
    outbox.put(oldest)
    outbox.put(newest)
    outbox.put(incoming)
    assert len(outbox) == 2
    if merges:
        assert isinstance(newest, TextDelta | ReasoningDelta)
        merged = type(newest)(chat_id="c1", message_id="a1", seq=2, text="abcd")
        assert outbox.queued_chars == 4
        assert await outbox.batch() == [oldest, merged], "the merged delta keeps the later seq"
        assert overflows.calls == 0 and not outbox.overflowed
    else:
        assert overflows.calls == 1 and outbox.overflowed
        assert await drain(outbox) == [oldest, newest]


async def test_merging_repeats_while_full() -> None:
    outbox = Outbox(max_events=1)
    for seq, chars in enumerate(["a", "b", "c", "d"]):
        outbox.put(text(chars, seq))
    assert await outbox.batch() == [text("abcd", 3)]


async def test_after_overflow_puts_are_ignored_and_readers_get_overflow() -> None:
    overflows = Counter()
    outbox = Outbox(max_events=2, on_overflow=overflows)
    queued = [status(0), status(1)]
    for event in queued:
        outbox.put(event)
    outbox.put(status(2))
    assert overflows.calls == 1
    for seq in range(3, 10):
        outbox.put(status(seq))
        outbox.put(text("x", seq))
    assert overflows.calls == 1, "on_overflow is called once"
    assert len(outbox) == 2

    # What was queued is still delivered; then every read raises.
    assert await outbox.batch() == queued
    with pytest.raises(Overflow):
        await outbox.batch()
    with pytest.raises(Overflow):
        await outbox.get()


async def test_overflow_wakes_a_waiting_reader() -> None:
    outbox = Outbox(max_events=8, max_chars=4)
    waiting = asyncio.create_task(outbox.batch())
    await asyncio.sleep(0.01)
    outbox.put(text("too long"))
    with pytest.raises(Overflow):
        await asyncio.wait_for(waiting, 1)


async def test_max_chars_bounds_the_queued_text() -> None:
    overflows = Counter()
    outbox = Outbox(max_events=100, max_chars=10, on_overflow=overflows)
    outbox.put(text("abcd", 0))
    outbox.put(reasoning("efg", 1))
    outbox.put(status(2))  # carries no reply text: does not count
    outbox.put(text("hij", 3))
    assert outbox.queued_chars == 10 and overflows.calls == 0, "the bound itself is allowed"

    assert await outbox.get() == text("abcd", 0)
    assert outbox.queued_chars == 6
    assert await outbox.get() == reasoning("efg", 1)
    assert outbox.queued_chars == 3
    outbox.put(text("klmnopq", 4))
    assert outbox.queued_chars == 10 and overflows.calls == 0

    outbox.put(text("r", 5))
    assert overflows.calls == 1 and outbox.overflowed
    assert await drain(outbox) == [status(2), text("hij", 3), text("klmnopq", 4)]


async def test_max_chars_bounds_the_queued_workspace_events_too() -> None:
    # Found by the probe of LIMITS.md: a Nadoo workspace's events were bounded by
    # their number alone; 256 events of 1 MB each, about 300 MB, for one reader that
    # stopped reading.  Their data counts as a reply's text does.
    overflows = Counter()
    outbox = Outbox(max_events=100, max_chars=1000, on_overflow=overflows)
    big = WorkspaceEvent("w1", "u1", "document_updated", {"doc": "x" * 580})
    assert big.size == len('{"doc":""}') + 580
    outbox.put(big)
    assert outbox.queued_chars == big.size and overflows.calls == 0
    outbox.put(WorkspaceEvent("w1", "u2", "document_updated", {"doc": "y" * 580}))
    assert overflows.calls == 1 and outbox.overflowed


async def test_max_chars_counts_merged_text() -> None:
    overflows = Counter()
    outbox = Outbox(max_events=1, max_chars=5, on_overflow=overflows)
    outbox.put(text("ab", 0))
    outbox.put(text("cd", 1))
    assert len(outbox) == 1 and outbox.queued_chars == 4
    outbox.put(text("ef", 2))
    assert overflows.calls == 1
    assert await drain(outbox) == [text("abcd", 1)]


async def test_reply_rooms_of_two_chats_with_the_same_message_id_are_apart() -> None:
    # Open WebUI clients pick message ids; "a1" in one chat is not "a1" in another.
    hub = Hub(outbox_max_events=8)
    first = hub.subscribe([rooms.reply("c1", "a1")])
    second = hub.subscribe([rooms.reply("c2", "a1")])
    assert rooms.reply("c1", "a1") != rooms.reply("c2", "a1")
    event = text("for c1", chat_id="c1")
    hub.publish([rooms.reply("c1", "a1")], event)
    assert await first.batch() == [event]
    assert len(second) == 0


async def test_publishing_to_a_reader_that_never_reads_is_fast_and_bounded() -> None:
    # The settings' defaults: 256 events, 1 MiB of text.
    hub = Hub(outbox_max_events=256, outbox_max_chars=1024 * 1024)
    stalled = hub.subscribe(["chat:c1"])
    reader = hub.subscribe(["chat:c1"])
    token = "one chunk "  # a few tokens of a model's reply
    started = time.perf_counter()
    for seq in range(100_000):
        hub.publish(["chat:c1"], text(token, seq))
        if seq % 100 == 99:
            assert len(await reader.batch()) == 100
    elapsed_s = time.perf_counter() - started
    assert len(stalled) <= 256 and not stalled.overflowed
    kept = await stalled.batch()
    assert all(isinstance(e, TextDelta) for e in kept)
    assert "".join(e.text for e in kept if isinstance(e, TextDelta)) == token * 100_000
    # Appending 100k events takes about 0.1 s; merging into the newest delta
    # must stay linear too, or the stalled reader's growing text is copied on
    # every publish and blocks the loop for everyone.
    assert elapsed_s < 1.0

    # Events that cannot merge overflow the stalled outbox; then they cost nothing.
    overflows = Counter()
    stalled = hub.subscribe(["chat:c1"], on_overflow=overflows)
    started = time.perf_counter()
    for seq in range(100_000):
        hub.publish(["chat:c1"], status(seq))
        if seq % 100 == 99:
            assert len(await reader.batch()) == 100
    assert time.perf_counter() - started < 1.0
    assert len(stalled) <= 256 and overflows.calls == 1


# -- the fast path: `deliver` ---------------------------------------------------------
class Consumer:
    """Takes events synchronously while `ready`; otherwise says "not now"."""

    def __init__(self) -> None:
        self.ready = True
        self.taken: list[Event] = []

    def __call__(self, event: Event) -> bool:
        if self.ready:
            self.taken.append(event)
        return self.ready


async def test_deliver_takes_events_at_once_and_queues_nothing() -> None:
    consumer = Consumer()
    outbox = Outbox(8, deliver=consumer)
    events = [text("a", 1), status(2), text("b", 3)]
    for event in events:
        outbox.put(event)
    assert consumer.taken == events and len(outbox) == 0


async def test_a_backed_up_consumer_gets_the_rest_in_order_through_batch() -> None:
    consumer = Consumer()
    outbox = Outbox(8, deliver=consumer)
    outbox.put(text("a", 1))
    consumer.ready = False
    outbox.put(text("b", 2))
    consumer.ready = True
    # Something is queued: later events queue behind it, never overtake it.
    outbox.put(text("c", 3))
    assert [e.seq for e in consumer.taken] == [1]
    batch = await outbox.batch()
    assert [e.seq for e in batch] == [2, 3]
    # While that batch is in flight, new events still queue behind it ...
    outbox.put(text("d", 4))
    assert [e.seq for e in consumer.taken] == [1] and len(outbox) == 1
    outbox.done()
    # ... and once it is handed on and the queue is empty again, the fast path resumes.
    assert [e.seq for e in await outbox.batch()] == [4]
    outbox.done()
    outbox.put(text("e", 5))
    assert [e.seq for e in consumer.taken] == [1, 5] and len(outbox) == 0


async def test_deliver_is_not_tried_after_close_or_overflow() -> None:
    consumer = Consumer()
    outbox = Outbox(8, deliver=consumer)
    outbox.close()
    outbox.put(text("late"))
    assert consumer.taken == []
    overflowing = Outbox(1, deliver=consumer)
    consumer.ready = False
    overflowing.put(status(1))
    overflowing.put(status(2))
    assert overflowing.overflowed
    consumer.ready = True
    overflowing.put(status(3))
    assert consumer.taken == []


async def test_hub_subscribe_passes_deliver_through() -> None:
    hub = Hub(8)
    consumer = Consumer()
    hub.subscribe(["user:u"], deliver=consumer)
    hub.publish(["user:u"], text("x"))
    assert consumer.taken == [text("x")]


# -- behind: a reply that outgrows a pacable outbox -----------------------------------------
class Behind:
    """An `on_behind` callback that records (event, after)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Event, int]] = []

    def __call__(self, event: Event, after: int) -> None:
        self.calls.append((event, after))


async def test_a_reply_that_outgrows_a_pacable_outbox_is_handed_over_not_dropped() -> None:
    overflows, behind = Counter(), Behind()
    outbox = Outbox(max_events=100, max_chars=10, on_overflow=overflows)
    outbox.on_behind = behind
    outbox.put(text("ab", 0))
    assert await outbox.get() == text("ab", 0)  # the consumer has seq 0
    outbox.put(text("cdef", 1))
    outbox.put(text("xy", 0, message_id="b1"))  # another reply, queued between
    outbox.put(text("ghij", 2))
    outbox.put(text("k", 3))  # 11 characters: no room
    assert not outbox.overflowed and overflows.calls == 0
    assert behind.calls == [(text("k", 3), 0)], "its rest follows seq 0, the last one taken"
    # The reply's queued events are gone (its follower brings them); the other stays.
    assert len(outbox) == 1 and outbox.queued_chars == 2
    # From now on the rooms' copies of the reply are dropped; others come.
    outbox.put(text("l", 4))
    outbox.put(text("z", 1, message_id="b1"))
    assert await outbox.batch() == [text("xy", 0, message_id="b1"), text("z", 1, message_id="b1")]
    # The follower's events go in (resumed), and the reply is the rooms' again after.
    outbox.done()
    outbox.put(text("cdef", 1), resumed=True)
    outbox.undivert("a1")
    outbox.put(text("m", 5))
    assert await outbox.batch() == [text("cdef", 1), text("m", 5)]
    assert overflows.calls == 0


async def test_behind_on_a_merged_delta_names_the_first_seq_merged() -> None:
    behind = Behind()
    outbox = Outbox(max_events=2, max_chars=8, on_overflow=Counter())
    outbox.on_behind = behind
    outbox.put(status(0, message_id="b1"))
    outbox.put(text("ab", 1))
    outbox.put(text("cd", 2))  # full: merged into seq 1
    outbox.put(text("efg", 3))  # merged too
    outbox.put(text("hij", 4))  # 10 characters: no room
    assert behind.calls == [(text("hij", 4), 0)]
    assert await outbox.batch() == [status(0, message_id="b1")]


async def test_without_on_behind_or_for_non_reply_events_it_still_overflows() -> None:
    overflows = Counter()
    outbox = Outbox(max_events=100, max_chars=3, on_overflow=overflows)
    outbox.put(text("abcd", 0, chat_id=None))
    assert overflows.calls == 1, "no on_behind: overflowed"
    paced, behind = Outbox(max_events=100, max_chars=3, on_overflow=Counter()), Behind()
    paced.on_behind = behind
    paced.put(text("abcd", 0, chat_id=None))
    assert paced.overflowed and not behind.calls, "no chat: nothing to follow it from"


async def test_room_for_waits_until_the_consumer_takes_then_a_stuck_one_overflows() -> None:
    overflows = Counter()
    outbox = Outbox(max_events=4, max_chars=100, on_overflow=overflows, stall_s=0.05)
    outbox.put(text("a" * 40, 0))
    assert outbox.fits(text("b" * 10, 1)) and not outbox.fits(text("b" * 11, 1))
    waiting = asyncio.create_task(outbox.room_for(text("b" * 20, 1)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert await outbox.batch() == [text("a" * 40, 0)]
    await asyncio.wait_for(waiting, 1)
    assert not outbox.overflowed
    # Half the events is the bound too; an empty queue takes any size.
    outbox.done()
    assert outbox.fits(text("x" * 1000, 2))
    for seq in range(2):
        outbox.put(status(seq))
    assert not outbox.fits(status(3))
    started = time.monotonic()
    await outbox.room_for(status(3))  # nobody takes: stuck after stall_s
    assert outbox.overflowed and overflows.calls == 1
    assert time.monotonic() - started >= 0.05


def test_take_hands_the_queue_over_at_once_and_holds_deliver_until_done() -> None:
    # The raw WebSocket's flush: the queue taken without awaiting; until done(), a
    # new event queues behind the batch rather than overtake it through `deliver`.
    offered: list[Event] = []

    def later(event: Event) -> bool:
        offered.append(event)
        return False

    outbox = Outbox(8, deliver=later)
    assert outbox.take() == []
    outbox.put(status(0))
    outbox.put(status(1))
    assert offered == [status(0)]  # only the first, into an empty outbox
    assert outbox.take() == [status(0), status(1)] and len(outbox) == 0
    outbox.put(status(2))
    assert offered == [status(0)]  # in flight: queued, not offered
    outbox.done()
    assert outbox.take() == [status(2)]
    outbox.done()
    outbox.put(status(3))
    assert offered == [status(0), status(3)]
