"""Following a reply from a point (`fanout/follow.py`), on a real hub and in-process
buffer: the plan made from the buffer alone, then replay and live each once, in
order, across the moment of the resume; gaps filled from the buffer; snapshots
when the buffer cannot serve; and an outbox that diverts a resumed reply."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

from gateway import rooms
from gateway.application.replies import Replies
from gateway.bus import Replay
from gateway.bus.memory import LocalJournal
from gateway.edge.auth import Principal
from gateway.events import (
    Event,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    StatusChanged,
    TextDelta,
    Usage,
)
from gateway.fanout.follow import Following, follow, into, plan
from gateway.fanout.hub import Hub

USER = "alice"


def started(message_id: str = "m1") -> ReplyStarted:
    return ReplyStarted("c1", message_id, 0, USER, None, "m", time.time())


def delta(seq: int, message_id: str = "m1") -> TextDelta:
    return TextDelta("c1", message_id, seq, f"w{seq} ")


def finished(seq: int, text: str, message_id: str = "m1") -> ReplyFinished:
    return ReplyFinished("c1", message_id, seq, text, Usage(1, 1), "stop", 0.1)


def whole(upto: int) -> str:
    return "".join(f"w{seq} " for seq in range(1, upto + 1))


def kept(*events: Event) -> Replay:
    return Replay("c1", USER, list(events))  # type: ignore[arg-type]


async def no_store(chat_id: str, message_id: str) -> ReplySnapshot | None:
    return None


def stored(content: str, done: bool) -> object:
    async def load(chat_id: str, message_id: str) -> ReplySnapshot | None:
        return ReplySnapshot(chat_id, message_id, -1, content, done, False)

    return load


def hub_with_journal(max_events: int = 100) -> Hub:
    return Hub(64, None, journal=LocalJournal(max_events, 60.0))


def publish(hub: Hub, event: Event) -> None:
    hub.reply_event(USER, [rooms.user(USER), rooms.chat("c1")], event)


async def collect(following: Following) -> list[Event]:
    return [event async for event in following.events]


# -- the plan ---------------------------------------------------------------------------
def test_plan_resumes_after_the_seq_with_the_rest_as_prefix() -> None:
    p = plan(kept(started(), delta(1), delta(2), delta(3)), 1)
    assert [e.seq for e in p.prefix] == [0, 1]
    assert [getattr(e, "seq", None) for e in p.replay] == [2, 3]
    assert p.last == 3 and not p.ended and not p.needs_snapshot


def test_plan_from_the_start_and_after_the_end() -> None:
    events = (started(), delta(1), finished(2, "w1"))
    assert len(plan(kept(*events), -1).replay) == 3
    done = plan(kept(*events), 2)
    assert done.replay == [] and done.ended


def test_plan_needs_the_store_when_the_buffer_lost_the_point_or_has_nothing() -> None:
    assert plan(kept(delta(5), delta(6)), 2).needs_snapshot  # cut by its bound
    assert not plan(kept(delta(5), delta(6)), 4).needs_snapshot  # still covers 5 on
    assert plan(None, 3).needs_snapshot


def test_plan_catch_up_is_one_exact_snapshot_of_the_text_so_far() -> None:
    p = plan(kept(started(), delta(1), StatusChanged("c1", "m1", 2, "x", True), delta(3)), -1, True)
    (snapshot,) = p.replay
    assert isinstance(snapshot, ReplySnapshot)
    assert (snapshot.content, snapshot.seq, snapshot.exact, snapshot.done) == (
        "w1 w3 ",
        3,
        True,
        False,
    )
    assert plan(kept(delta(3)), -1, True).needs_snapshot


# -- following ------------------------------------------------------------------------
async def test_replay_then_live_each_once_in_order() -> None:
    hub = hub_with_journal()
    publish(hub, started())
    for seq in range(1, 6):
        publish(hub, delta(seq))
    following = await follow(hub, USER, "m1", 2, no_store)
    assert following is not None and [e.seq for e in following.prefix] == [0, 1, 2]
    for seq in range(6, 9):
        publish(hub, delta(seq))
    publish(hub, finished(9, whole(8)))
    events = await collect(following)
    assert [getattr(e, "seq", None) for e in events] == list(range(3, 10))


async def test_another_users_reply_is_not_found_and_unknown_chat_neither() -> None:
    hub = hub_with_journal()
    publish(hub, started())
    assert await follow(hub, "bob", "m1", -1, no_store) is None
    assert await follow(hub, USER, "m1", -1, no_store, chat_id="other-chat") is None
    assert await follow(hub, USER, "nope", -1, no_store) is None


async def test_a_gap_is_filled_from_the_buffer_once_it_has_the_events() -> None:
    """Another replica's buffer flushes late: live events overtake it."""
    journal = LocalJournal(100, 60.0)
    hub = Hub(64, None, journal=journal)
    publish(hub, started())
    publish(hub, delta(1))
    following = await follow(hub, USER, "m1", 1, no_store)
    assert following is not None
    # 2 and 3 are published live but reach the buffer only a little later.
    hub.publish([rooms.user(USER)], delta(2))
    hub.publish([rooms.user(USER)], delta(3))
    publish(hub, delta(4))

    async def late() -> None:
        await asyncio.sleep(0.04)
        journal.record(USER, delta(2))
        journal.record(USER, delta(3))
        publish(hub, finished(5, whole(4)))

    task = asyncio.create_task(late())
    events = await collect(following)
    await task
    assert [getattr(e, "seq", None) for e in events] == [2, 3, 4, 5]


async def test_a_gap_never_filled_is_bridged_by_the_stored_snapshot() -> None:
    hub = hub_with_journal()
    publish(hub, started())
    following = await follow(hub, USER, "m1", 0, stored("w1 w2 ", False))  # type: ignore[arg-type]
    assert following is not None
    hub.publish([rooms.user(USER)], delta(3))  # 1 and 2 never reach this buffer
    publish(hub, finished(4, whole(3)))
    events = await collect(following)
    assert isinstance(events[0], ReplySnapshot) and not events[0].exact
    assert [type(e).__name__ for e in events[1:]] == ["TextDelta", "ReplyFinished"]


async def test_an_expired_reply_is_the_stored_snapshot_and_ends_there() -> None:
    hub = hub_with_journal()
    following = await follow(hub, USER, "m1", 4, stored("all of it", True), chat_id="c1")  # type: ignore[arg-type]
    assert following is not None
    (snapshot,) = await collect(following)
    assert isinstance(snapshot, ReplySnapshot)
    assert (snapshot.content, snapshot.done, snapshot.exact, snapshot.seq) == (
        "all of it",
        True,
        False,
        4,
    )


async def test_catch_up_then_live() -> None:
    hub = hub_with_journal()
    publish(hub, started())
    publish(hub, delta(1))
    publish(hub, delta(2))
    following = await follow(hub, USER, "m1", -1, no_store, catch_up=True)
    assert following is not None
    publish(hub, delta(3))
    publish(hub, finished(4, whole(3)))
    events = await collect(following)
    assert isinstance(events[0], ReplySnapshot) and events[0].content == "w1 w2 "
    assert [e.seq for e in events[1:]] == [3, 4]  # type: ignore[union-attr]


async def test_a_finished_reply_the_client_has_whole_is_finished() -> None:
    hub = hub_with_journal()
    for event in (started(), delta(1), finished(2, "w1")):
        publish(hub, event)
    following = await follow(hub, USER, "m1", 2, no_store)
    assert following is not None and following.finished
    assert await collect(following) == []


# -- into a connection's outbox --------------------------------------------------------------
async def test_into_diverts_the_rooms_copies_so_each_event_comes_once() -> None:
    hub = hub_with_journal()
    publish(hub, started())
    publish(hub, delta(1))
    connection = hub.subscribe([rooms.user(USER)])
    following = await follow(hub, USER, "m1", -1, no_store)
    assert following is not None
    task = asyncio.create_task(into(connection, following))
    await asyncio.sleep(0)
    for seq in (2, 3):
        publish(hub, delta(seq))
    publish(hub, finished(4, whole(3)))
    other = TextDelta("c1", "m2", 1, "other reply")
    publish(hub, other)
    await task
    got = []
    while len(connection):
        got.append(await connection.get())

    # Each reply in order, each event once (two replies may interleave either way).
    def seqs(message_id: str) -> list[int]:
        return [
            e.seq
            for e in got
            if isinstance(e, TextDelta | ReplyFinished) and e.message_id == message_id
        ]

    assert seqs("m1") == [1, 2, 3, 4]
    assert seqs("m2") == [1]
    # Once the resume is over, the reply's events come from the rooms again.
    publish(hub, delta(9))
    assert (await connection.get()) == delta(9)


async def test_a_follower_slower_than_the_model_goes_on_from_the_buffer() -> None:
    """Its live queue (64 events here) overflows while it is not read: it listens
    afresh and takes what it missed from the buffer, each event once, to the end."""
    hub = hub_with_journal(max_events=1000)
    publish(hub, started())
    following = await follow(hub, USER, "m1", 0, no_store)
    assert following is not None
    got: list[Event] = []
    async with contextlib.aclosing(following.events):
        for seq in range(1, 201):  # three times what its queue holds
            publish(hub, delta(seq))
        got.append(await anext(following.events))  # the overflow is found here
        for seq in range(201, 301):
            publish(hub, delta(seq))
            if seq % 50 == 0:  # overflowing again, while it reads
                got.append(await anext(following.events))
        publish(hub, finished(301, whole(300)))
        got.extend([event async for event in following.events])
    assert [getattr(e, "seq", None) for e in got] == list(range(1, 302))
    assert isinstance(got[-1], ReplyFinished)


async def test_into_waits_for_room_in_the_connection_and_loses_nothing() -> None:
    """A connection whose consumer is slow gets a followed reply at its pace."""
    hub = hub_with_journal(max_events=1000)
    publish(hub, started())
    connection = hub.subscribe([rooms.user(USER)])  # 64 events at most
    following = await follow(hub, USER, "m1", 0, no_store)
    assert following is not None
    task = asyncio.create_task(into(connection, following))
    for seq in range(1, 301):
        publish(hub, delta(seq))
        if seq % 20 == 0:
            await asyncio.sleep(0)
    publish(hub, finished(301, whole(300)))
    got: list[Event] = []
    while not (got and isinstance(got[-1], ReplyFinished)):
        batch = await asyncio.wait_for(connection.batch(), 1)
        assert len(batch) <= 32, "never more than half the outbox from the follower"
        got.extend(batch)
        connection.done()
    await task
    assert not connection.overflowed
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == whole(300)


async def test_a_follower_that_overflows_past_the_buffer_still_gets_the_end() -> None:
    """Its live queue overflows (the client reads slower than the model) while
    another replica's buffer has not flushed the reply's tail yet, its end among
    it, and nothing more of the reply is published: the end still comes, from the
    buffer, once it is flushed, while the user's other reply goes on (its events
    are not this reply's: they do not put the re-read off)."""
    journal = LocalJournal(1000, 60.0)
    journal.lag_s = 0.05  # as another replica's (Redis) buffer: flushed late
    hub = Hub(64, None, journal=journal)
    publish(hub, started())
    following = await follow(hub, USER, "m1", 0, no_store)
    assert following is not None
    tail = [*(delta(seq) for seq in range(1, 201)), finished(201, whole(200))]
    for event in tail:  # live, three times what its queue holds; the buffer later
        hub.publish([rooms.user(USER)], event)

    async def late() -> None:
        await asyncio.sleep(0.2)
        for event in tail:
            journal.record(USER, event)

    async def other_reply() -> None:  # 6 s of another reply, an event every 0.3 s
        for seq in range(1, 21):
            hub.publish([rooms.user(USER)], delta(seq, message_id="m2"))
            await asyncio.sleep(0.3)

    flushing, other = asyncio.create_task(late()), asyncio.create_task(other_reply())
    events = await asyncio.wait_for(collect(following), 5)
    await flushing
    assert not other.done(), "the end waited for the other reply to fall silent"
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    assert [getattr(e, "seq", None) for e in events] == list(range(1, 202))
    assert isinstance(events[-1], ReplyFinished)


async def test_a_silent_reply_is_read_again_without_repeats_or_snapshots() -> None:
    """A reply with nothing new for longer than the re-read interval (a model
    thinking): the buffer is read again, and nothing is sent twice, no stored
    snapshot stands in for it; then it goes on live to its end."""
    journal = LocalJournal(1000, 60.0)
    journal.lag_s = 0.05
    hub = Hub(64, None, journal=journal)
    publish(hub, started())
    publish(hub, delta(1))
    following = await follow(hub, USER, "m1", 1, stored("w1 w2 ", True))
    assert following is not None
    got: list[Event] = []

    async def read() -> None:
        async for event in following.events:
            got.append(event)

    reading = asyncio.create_task(read())
    started_at = time.monotonic()
    await asyncio.sleep(1.5)  # past the first re-read: nothing new, nothing sent
    assert got == []
    journal.record(USER, delta(2))  # in the buffer only (its live copy lost)
    while not got:  # the next re-read, 2 s after the first, brings it
        assert time.monotonic() - started_at < 6, "the buffer was not read again"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started_at > 2.5  # not before that re-read
    hub.publish([rooms.user(USER)], delta(2))  # a late live copy: not sent again
    publish(hub, delta(3))
    publish(hub, finished(4, whole(3)))
    await asyncio.wait_for(reading, 5)
    assert [getattr(e, "seq", None) for e in got] == [2, 3, 4]
    assert not any(isinstance(e, ReplySnapshot) for e in got)


# -- a catch-up on joining ----------------------------------------------------------------


async def test_a_catch_up_skips_the_replies_the_connection_has_had_from_their_start() -> None:
    # A Socket.IO tab (or a user's event stream) that joins as its own reply starts:
    # its room brings that reply whole.  Caught up as well, the events between the
    # follower's read of the buffer and its divert would come twice (the one
    # failure of the rolling-restart test: "w2 w2" for a client that appends
    # deltas).  A reply that started before the connection joined is caught up.
    hub = hub_with_journal()
    replies = Replies(cast(Any, None), hub)
    publish(hub, started("before"))
    publish(hub, delta(1, "before"))
    outbox = hub.subscribe([rooms.user(USER)])
    outbox.note_starts()
    publish(hub, started())
    publish(hub, delta(1))

    (caught,) = await replies.catch_up(Principal(USER, "Alice"), outbox)
    assert caught.message_id == "before"
    caught.close()
    publish(hub, started("after"))
    assert outbox.stop_noting() == set()  # the catch-up stopped noting
    got = [(e.message_id, e.seq) for e in outbox.take()]  # type: ignore[union-attr]
    assert got == [("m1", 0), ("m1", 1), ("after", 0)]  # whole, from the room alone
    outbox.done()


async def test_a_catch_up_still_skips_what_the_client_named() -> None:
    hub = hub_with_journal()
    replies = Replies(cast(Any, None), hub)
    publish(hub, started())
    outbox = hub.subscribe([rooms.user(USER)])
    outbox.note_starts()
    assert await replies.catch_up(Principal(USER, "Alice"), outbox, skip={"m1"}) == []


async def test_a_catch_up_holds_back_the_rooms_copies_until_its_followers_take_over() -> None:
    # Two replies that started before the connection joined: each caught up, from
    # its text so far.  Their events published while the followers are set up (one
    # after the other, each waiting out the buffer's lag) reach the connection once:
    # through the follower, not also straight from the room.
    journal = LocalJournal(1000, 60.0)
    journal.lag_s = 0.05
    hub = Hub(64, None, journal=journal)
    replies = Replies(cast(Any, None), hub)
    for message_id in ("m1", "m2"):
        publish(hub, started(message_id))
        publish(hub, delta(1, message_id))
    got: list[Event] = []  # what the socket wrote, as each came (Engine.IO's queue)
    outbox = hub.subscribe([rooms.user(USER)], deliver=lambda event: got.append(event) is None)
    outbox.note_starts()

    async def meanwhile() -> None:  # while the first follower waits out the lag, then the second
        for seq in (2, 3, 4, 5):
            await asyncio.sleep(0.03)
            for message_id in ("m1", "m2"):
                publish(hub, delta(seq, message_id))

    publishing = asyncio.create_task(meanwhile())
    caught = await replies.catch_up(Principal(USER, "Alice"), outbox)
    following = []
    for one in caught:  # as the transports do, before they await again (`Realtime.resume`)
        outbox.divert(one.message_id)
        following.append(asyncio.create_task(into(outbox, one)))
    assert sorted(one.message_id for one in caught) == ["m1", "m2"]
    await publishing
    for message_id in ("m1", "m2"):
        publish(hub, delta(6, message_id))
        publish(hub, finished(7, whole(6), message_id))
    await asyncio.wait_for(asyncio.gather(*following), 5)
    for message_id in ("m1", "m2"):
        mine = [e for e in got if getattr(e, "message_id", None) == message_id]
        seqs = [e.seq for e in mine if isinstance(e, TextDelta)]
        assert len(seqs) == len(set(seqs)), f"a delta of {message_id} came twice: {seqs}"
        text = ""
        for event in mine:
            if isinstance(event, ReplySnapshot):
                text = event.content
            elif isinstance(event, TextDelta):
                text += event.text
        assert text == whole(6), message_id
        assert isinstance(mine[-1], ReplyFinished)
