"""RedisRooms against real Redis: two or three replicas in one process (`support.py`).

Per-room channels subscribed only where members are, the watcher mirror (a room is
published only where another replica watches it), bounded and split messages, and
events held until the mirror is synced after every (re)connect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time

import pytest

from gateway.bus import link, wire
from gateway.bus.link import Sender
from gateway.edge import metrics
from gateway.events import ReplyFinished, TextDelta, Usage
from tests.bus.support import (
    SHARED_URL,
    STORED_TEXT,
    Make,
    Replica,
    delta,
    eventually,
    sentinel,
    watched,
)
from tests.services import RedisServer

# -- events for rooms --------------------------------------------------------------


async def test_delivered_once_and_only_for_watched_rooms(replica: Make) -> None:
    a, b = await replica(), await replica()
    await watched(b, "user:x", told=[a])

    first = delta("to x and y")
    a.rooms.publish(["user:x", "user:y"], first)
    await eventually(lambda: b.delivered)
    a.rooms.publish(["user:y"], delta("to y only"))
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x", "user:y"], first)]
    assert a.delivered == []


async def test_a_replica_just_started_reaches_rooms_watched_elsewhere(replica: Make) -> None:
    # A rolling restart: B's member was there first; A comes up and publishes at once.
    b = await replica()
    b.rooms.watch("user:x")
    await b.rooms.watching(["user:x"])
    a = await replica()
    assert a.rooms.problem() is None  # ready: a balancer sends it traffic now

    event = delta("first words of a reply on the new replica")
    a.rooms.publish(["user:x"], event)
    await asyncio.sleep(0.3)  # by now A has heard which rooms B watches: the sentinel goes
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x"], event)], "the first event of a new replica was lost"


async def test_an_event_for_two_watched_rooms_arrives_once(replica: Make) -> None:
    a, b = await replica(), await replica()
    await watched(b, "user:x", "chat:c1", told=[a])

    event = delta("both")
    a.rooms.publish(["user:x", "chat:c1"], event)
    await sentinel(a, b, "chat:c1")  # after the copy on chat:c1, which comes last
    assert b.delivered == [(["user:x", "chat:c1"], event)]


async def test_own_events_are_not_delivered_to_oneself(replica: Make) -> None:
    a, b = await replica(), await replica()
    for one, other in ((a, b), (b, a)):
        await watched(one, "user:x", told=[other])

    own, last = delta("from b"), delta("from b, last")
    b.rooms.publish(["user:x"], own)
    b.rooms.publish(["user:x"], last)
    # A got both: they went through Redis, to B's subscription too.
    await eventually(lambda: last in a.events())
    await asyncio.sleep(0.2)
    assert a.events() == [own, last]
    assert b.delivered == []


async def test_connection_and_reply_rooms_never_leave_the_process(replica: Make) -> None:
    a, b = await replica(), await replica()
    # The hub never watches these; B does here only to see whether they are published.
    rooms = ["conn:k1", "reply:c1/m1", "user:x"]
    await watched(b, *rooms, told=[a])

    event = delta("mixed")
    a.rooms.publish(rooms, event)
    await eventually(lambda: b.delivered)
    a.rooms.publish(["conn:k1"], delta("conn only"))
    a.rooms.publish(["reply:c1/m1", "conn:k1"], delta("local only"))
    assert not a.rooms._sender.held, "nothing queued for local rooms"
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x"], event)]


async def test_order_of_many_deltas_is_kept(replica: Make) -> None:
    a, b = await replica(), await replica()
    await watched(b, "chat:c1", told=[a])

    sent = [delta(f"token {seq} ", seq) for seq in range(500)]
    for event in sent:
        a.rooms.publish(["chat:c1"], event)
    await eventually(lambda: len(b.delivered) >= 500, timeout_s=10)
    assert b.events() == sent


async def test_unwatched_room_no_longer_arrives(replica: Make) -> None:
    a, b = await replica(), await replica()
    await watched(b, "user:x", "user:z", told=[a])
    a.rooms.publish(["user:x"], delta("before"))
    await eventually(lambda: b.delivered)

    b.rooms.unwatch("user:x")
    await asyncio.sleep(0.2)  # the unsubscription goes out in the background
    a.rooms.publish(["user:x"], delta("after"))
    await sentinel(a, b, "user:z")
    await asyncio.sleep(0.2)
    assert b.events() == [delta("before")]

    # Watching again receives again.
    await watched(b, "user:x", told=[a])
    a.rooms.publish(["user:x"], delta("again"))
    await eventually(lambda: delta("again") in b.events())


# -- events too big for one message ------------------------------------------------


async def test_big_delta_travels_in_pieces_and_arrives_whole(replica: Make) -> None:
    # Cut to cross Redis, put together by the receiver: one event, one seq, as
    # published (pieces delivered apart would each be a delta of the same seq, and a
    # connection that fell behind between two would get the first ones again).
    a, b = await replica(max_message_bytes=4096), await replica()
    await watched(b, "chat:c1", told=[a])

    text = ("abcdefghi\x01é中😀" * 2_000)[:20_000]
    assert len(text) == 20_000
    assert len(wire.split(["chat:c1"], delta(text, seq=9), 4096)) > 1
    a.rooms.publish(["chat:c1"], delta(text, seq=9))
    a.rooms.publish(["chat:c1"], delta("next", seq=10))
    await eventually(lambda: len(_texts(b)) >= 20_004)
    assert [(type(e), e.seq) for e in b.events()] == [(TextDelta, 9), (TextDelta, 10)]
    assert _texts(b) == text + "next"


def _texts(one: Replica) -> str:
    return "".join(e.text for e in one.events() if isinstance(e, TextDelta))


async def test_huge_finished_reply_is_read_from_the_store(replica: Make) -> None:
    a, b = await replica(), await replica()
    await watched(b, "chat:c1", told=[a])

    finished = ReplyFinished("c1", "m1", 12, "x" * 1_000_000, Usage(3, 4, True), "stop", 2.5)
    a.rooms.publish(["chat:c1"], finished)
    await eventually(lambda: b.delivered)
    assert b.delivered == [(["chat:c1"], dataclasses.replace(finished, content=STORED_TEXT))]
    assert b.loads == [("c1", "m1")]
    assert a.loads == []


async def test_redis_down_and_back_watched_rooms_are_received_again(
    redis_server: RedisServer, replica: Make
) -> None:
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    await watched(b, "user:x", told=[a])
    assert b.rooms.problem() is None
    a.rooms.publish(["user:x"], delta("before", 0))
    await eventually(lambda: b.delivered)

    redis_server.stop()
    problem = await eventually(b.rooms.problem)
    assert "unreachable" in problem
    await asyncio.sleep(0.5)  # a few failed reconnections
    assert b.rooms.problem() is not None

    redis_server.start()  # empty: B's subscriptions must be made again
    await eventually(lambda: b.rooms.problem() is None, timeout_s=10)
    await eventually(lambda: a.rooms.problem() is None, timeout_s=10)
    after = delta("after", 1)
    a.rooms.publish(["user:x"], after)
    await eventually(lambda: after in b.events())
    assert b.events() == [delta("before", 0), after]


async def test_events_published_while_redis_is_down_are_delivered_after(
    redis_server: RedisServer, replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    await watched(b, "user:x", told=[a])

    redis_server.stop()
    await eventually(b.rooms.problem)
    # Listeners retry 0.1, 0.3, 0.7, 1.5, 3.1 s after losing Redis: 2 s in, A's and B's
    # both wait for their 3.1 s try when a reply that keeps streaming publishes.
    await asyncio.sleep(2.0)
    during = [delta(f"during {seq}", seq) for seq in range(3)]
    for event in during:
        a.rooms.publish(["user:x"], event)
    # A holds them (not out of the bound: 3 < max_pending) until it knows again who
    # watches what: sending at the first chance would reach no subscriber yet.
    assert [seq for seq in _queued_seqs(a)] == [0, 1, 2]
    redis_server.start()

    await eventually(lambda: b.rooms.problem() is None, timeout_s=10)
    await eventually(
        lambda: len(b.delivered) >= 3, timeout_s=5, what="the events queued while down reach B"
    )
    assert b.events() == during


async def test_queue_is_bounded_while_redis_is_down(
    redis_server: RedisServer, replica: Make
) -> None:
    a = await replica(redis_server.url, max_pending=10)
    b = await replica(redis_server.url)
    await watched(b, "user:x", told=[a])  # else A has no reason to send anything
    redis_server.stop()
    await eventually(a.rooms.problem)

    for seq in range(100):
        a.rooms.publish(["user:x"], delta(f"{seq}", seq))
        assert len(a.rooms._sender.held) <= 10
    # The newest are kept.
    assert _queued_seqs(a) == list(range(90, 100))
    # The sender's failed tries put their batch back without passing the bound.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert len(a.rooms._sender.held) <= 10
        await asyncio.sleep(0.02)
    redis_server.start()  # so that closing the bus is not a series of retries


async def test_a_crowded_queue_makes_a_reply_wait_until_it_drains_and_drops_nothing(
    replica: Make,
) -> None:
    # A replica whose loop is too busy to send: events come faster than they go.
    # From half the bound it is crowded; a reply then awaits `room()` (the runner
    # does, before its next read of the model server) instead of racing on into
    # the bound, where the oldest would be dropped.
    a = await replica(max_pending=100)
    b = await replica()
    await watched(b, "user:x", told=[a])
    waits = metrics.HOT.bus_waits
    sent: list[TextDelta] = []
    for seq in range(300):
        event = delta(f"{seq}", seq)
        a.rooms.publish(["user:x"], event)  # never awaits: the sender gets no turn
        sent.append(event)
        if a.rooms.crowded():
            assert len(a.rooms._sender.held) == 50  # half the bound: never near it
            await a.rooms.room()
            assert not a.rooms.crowded()
            assert len(a.rooms._sender.held) <= 25  # down to a quarter
    assert metrics.HOT.bus_waits - waits == 6  # at 50, 100, … 300 published
    await eventually(lambda: len(b.delivered) == 300, what="every event reaches B")
    assert b.events() == sent
    assert a.rooms._sender.dropped == 0


async def test_an_outage_never_makes_a_reply_wait(redis_server: RedisServer, replica: Make) -> None:
    a = await replica(redis_server.url, max_pending=100)
    b = await replica(redis_server.url)
    await watched(b, "user:x", told=[a])
    redis_server.stop()
    await eventually(a.rooms.problem)
    for seq in range(60):
        a.rooms.publish(["user:x"], delta(f"{seq}", seq))
    assert a.rooms._sender.crowded  # more than half the bound waits for Redis…
    assert not a.rooms.crowded()  # …but a reply goes on: Redis may be gone for minutes
    redis_server.start()
    await eventually(lambda: len(b.delivered) == 60, timeout_s=15, what="held, then sent")
    await eventually(lambda: not a.rooms._sender.crowded)


async def test_a_sender_that_fails_to_send_never_makes_a_reply_wait() -> None:
    # Its listener may be up while its own connection is refused (Redis full of
    # clients, an ACL): the queue then waits for Redis, and the replies do not.
    redis = link.client(f"redis://127.0.0.1:{closed_port()}/0")
    sender = Sender(redis, max_pending=10)
    for seq in range(6):
        sender.command("publish", "nowhere", str(seq))
    assert not sender.crowded  # past half the bound, but no sender runs: none to wait for
    task = asyncio.create_task(sender.run())
    try:
        await eventually(lambda: not sender.crowded, what="a failed send lifts the pressure")
        assert len(sender.commands) == 6  # kept, to be sent once Redis answers
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def test_a_command_redis_refuses_is_logged_and_holds_up_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A user without a command's permission, a full Redis refusing writes, a key of
    # another type: the refused command is not sent again; those around it go.
    redis = link.client(SHARED_URL)
    sender = Sender(redis, max_pending=10)
    task = asyncio.create_task(sender.run())
    try:
        sender.command("set", f"{prefix}text", "a string")
        sender.command("hset", f"{prefix}text", "field", "refused: not a hash")
        sender.command("set", f"{prefix}after", "sent")
        await sender.drained(5)
        assert not sender.commands and await redis.get(f"{prefix}after") == "sent"
        [said] = [r for r in caplog.records if "Redis refused bus commands" in r.getMessage()]
        assert "WRONGTYPE" in said.__dict__["error"] and said.__dict__["refused"] == 1
        sender.command("set", f"{prefix}later", "sent too")  # the sender goes on
        await sender.drained(5)
        assert await redis.get(f"{prefix}later") == "sent too"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.delete(f"{prefix}text", f"{prefix}after", f"{prefix}later")
        await redis.aclose()


async def test_a_redis_that_hangs_stops_making_replies_wait() -> None:
    # Stopped, busy with a long script, or behind a network that drops everything:
    # nothing fails, nothing comes back.  A batch on its way for `STALLED_S` lifts
    # the pressure.
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # everything, until the client hangs up: never a reply
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = link.client(f"redis://127.0.0.1:{port}/0")
    sender = Sender(redis, max_pending=10)
    task = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0)  # it runs
        for seq in range(6):
            sender.command("publish", "nowhere", str(seq))
        await asyncio.sleep(0.3)
        assert sender.crowded  # a batch on its way, not for long yet
        started = time.monotonic()
        await eventually(lambda: not sender.crowded, what="the pressure lifted")
        assert time.monotonic() - started < link.STALLED_S + 0.5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
        server.close()


async def test_a_reply_waiting_for_room_can_always_be_stopped() -> None:
    # The room opens and the stop comes in the same turn (a user's stop, a replica
    # stopping): the wait ends cancelled, so the reply ends; it never reads on.
    redis = link.client(SHARED_URL)
    sender = Sender(redis, max_pending=10)
    for seq in range(6):
        sender.command("publish", "nowhere", str(seq))  # crowded, had a sender run
    waiter = asyncio.create_task(sender.room(5.0))
    await asyncio.sleep(0)  # waiting
    sender._roomy.set()  # drained (as `run` does)…
    waiter.cancel()  # …and stopped at once
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await redis.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _queued_seqs(one: Replica) -> list[int]:
    """The seqs of the room events queued (commands wait in a queue of their own)."""
    seqs = []
    for _since, (rooms, message) in one.rooms._sender.held:
        assert rooms == ["user:x"]
        _, event, _, _ = wire.decode(message)
        assert isinstance(event, TextDelta)
        seqs.append(event.seq)
    return seqs
