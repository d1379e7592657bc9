"""RedisBus against real Redis: two or three buses in one process stand for replicas.

Each test has its own key prefix on the shared server (127.0.0.1:6379), or a private
`RedisServer` when it kills Redis.  "Nothing arrived" is proved with a sentinel: an
event published after the one that must not arrive, through the same sender, so the
receiver has handled the first before it sees the sentinel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.bus import TaskInfo, wire
from gateway.bus.redis import RedisBus
from gateway.events import Event, ReplyFinished, TextDelta, Usage
from gateway.fanout.presence import Seat
from tests.services import RedisServer

SHARED_URL = "redis://127.0.0.1:6379/0"
STORED_TEXT = "the reply as the store has it: é中😀"


class Replica:
    """A bus and what its callbacks were given."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.delivered: list[tuple[list[str], Event]] = []
        self.controls: list[dict[str, Any]] = []
        self.orphans: list[TaskInfo] = []
        self.loads: list[tuple[str, str]] = []
        self.crashed = False

    def deliver(self, rooms: list[str], event: Event) -> None:
        self.delivered.append((rooms, event))

    async def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    async def on_orphan(self, task: TaskInfo) -> None:
        self.orphans.append(task)

    async def load(self, chat_id: str, message_id: str) -> str | None:
        self.loads.append((chat_id, message_id))
        return STORED_TEXT

    def events(self) -> list[Event]:
        return [event for _, event in self.delivered]

    async def start(self) -> Replica:
        await self.bus.start(self.deliver, self.on_control, self.on_orphan, self.load)
        return self

    async def crash(self) -> None:
        """Stop as a killed process would: no goodbye, its keys left to expire."""
        self.crashed = True
        for task in self.bus._tasks:
            task.cancel()
        await asyncio.gather(*self.bus._tasks, return_exceptions=True)
        await self.bus._redis.aclose()


Make = Callable[..., Awaitable[Replica]]


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def replica(prefix: str) -> AsyncIterator[Make]:
    """`await replica(url=..., **RedisBus options)`: a started bus, closed at the end."""
    made: list[Replica] = []

    async def make(url: str = SHARED_URL, **options: Any) -> Replica:
        one = Replica(RedisBus(url, prefix, **options))
        made.append(one)
        return await one.start()

    try:
        yield make
    finally:
        for one in made:
            if not one.crashed:
                await one.bus.close()
        # Our own keys on the shared server (a private one goes away whole).
        client = aioredis.Redis.from_url(SHARED_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0, what: str = "") -> Any:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not true after {timeout_s} s: {what or check}"
        await asyncio.sleep(0.02)


async def eventually_async(check: Callable[[], Awaitable[Any]], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not true after {timeout_s} s"
        await asyncio.sleep(0.05)


def delta(text: str, seq: int = 0, message_id: str = "m1") -> TextDelta:
    return TextDelta("c1", message_id, seq, text)


async def sentinel(sender: Replica, receiver: Replica, room: str) -> None:
    """Until `receiver` has handled everything `sender` published before now to rooms
    the receiver watches (Redis keeps one sender's order on one subscriber)."""
    marker = delta(f"sentinel {uuid.uuid4().hex}", message_id="sentinel")
    sender.bus.publish([room], marker)
    await eventually(lambda: marker in receiver.events())
    receiver.delivered.remove(([room], marker))


# -- events for rooms --------------------------------------------------------------


async def test_delivered_once_and_only_for_watched_rooms(replica: Make) -> None:
    a, b = await replica(), await replica()
    b.bus.watch("user:x")
    await b.bus.watching(["user:x"])

    first = delta("to x and y")
    a.bus.publish(["user:x", "user:y"], first)
    await eventually(lambda: b.delivered)
    a.bus.publish(["user:y"], delta("to y only"))
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x", "user:y"], first)]
    assert a.delivered == []


async def test_a_replica_just_started_reaches_rooms_watched_elsewhere(replica: Make) -> None:
    # A rolling restart: B's member was there first; A comes up and publishes at once.
    b = await replica()
    b.bus.watch("user:x")
    await b.bus.watching(["user:x"])
    a = await replica()
    assert a.bus.problem() is None  # ready: a balancer sends it traffic now

    event = delta("first words of a reply on the new replica")
    a.bus.publish(["user:x"], event)
    await asyncio.sleep(0.3)  # by now A has heard which rooms B watches: the sentinel goes
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x"], event)], "the first event of a new replica was lost"


async def test_an_event_for_two_watched_rooms_arrives_once(replica: Make) -> None:
    a, b = await replica(), await replica()
    for room in ("user:x", "chat:c1"):
        b.bus.watch(room)
    await b.bus.watching(["user:x", "chat:c1"])

    event = delta("both")
    a.bus.publish(["user:x", "chat:c1"], event)
    await sentinel(a, b, "chat:c1")  # after the copy on chat:c1, which comes last
    assert b.delivered == [(["user:x", "chat:c1"], event)]


async def test_own_events_are_not_delivered_to_oneself(replica: Make) -> None:
    a, b = await replica(), await replica()
    for one in (a, b):
        one.bus.watch("user:x")
        await one.bus.watching(["user:x"])

    own, last = delta("from b"), delta("from b, last")
    b.bus.publish(["user:x"], own)
    b.bus.publish(["user:x"], last)
    # A got both: they went through Redis, to B's subscription too.
    await eventually(lambda: last in a.events())
    await asyncio.sleep(0.2)
    assert a.events() == [own, last]
    assert b.delivered == []


async def test_connection_and_reply_rooms_never_leave_the_process(replica: Make) -> None:
    a, b = await replica(), await replica()
    # The hub never watches these; B does here only to see whether they are published.
    rooms = ["conn:k1", "reply:c1/m1", "user:x"]
    for room in rooms:
        b.bus.watch(room)
    await b.bus.watching(rooms)

    event = delta("mixed")
    a.bus.publish(rooms, event)
    await eventually(lambda: b.delivered)
    a.bus.publish(["conn:k1"], delta("conn only"))
    a.bus.publish(["reply:c1/m1", "conn:k1"], delta("local only"))
    assert not a.bus._events, "nothing queued for local rooms"
    await sentinel(a, b, "user:x")
    assert b.delivered == [(["user:x"], event)]


async def test_order_of_many_deltas_is_kept(replica: Make) -> None:
    a, b = await replica(), await replica()
    b.bus.watch("chat:c1")
    await b.bus.watching(["chat:c1"])

    sent = [delta(f"token {seq} ", seq) for seq in range(500)]
    for event in sent:
        a.bus.publish(["chat:c1"], event)
    await eventually(lambda: len(b.delivered) >= 500, timeout_s=10)
    assert b.events() == sent


async def test_unwatched_room_no_longer_arrives(replica: Make) -> None:
    a, b = await replica(), await replica()
    for room in ("user:x", "user:z"):
        b.bus.watch(room)
    await b.bus.watching(["user:x", "user:z"])
    a.bus.publish(["user:x"], delta("before"))
    await eventually(lambda: b.delivered)

    b.bus.unwatch("user:x")
    await asyncio.sleep(0.2)  # the unsubscription goes out in the background
    a.bus.publish(["user:x"], delta("after"))
    await sentinel(a, b, "user:z")
    await asyncio.sleep(0.2)
    assert b.events() == [delta("before")]

    # Watching again receives again.
    b.bus.watch("user:x")
    await b.bus.watching(["user:x"])
    a.bus.publish(["user:x"], delta("again"))
    await eventually(lambda: delta("again") in b.events())


# -- events too big for one message ------------------------------------------------


async def test_big_delta_arrives_in_pieces(replica: Make) -> None:
    a, b = await replica(max_message_bytes=4096), await replica()
    b.bus.watch("chat:c1")
    await b.bus.watching(["chat:c1"])

    text = ("abcdefghi\x01é中😀" * 2_000)[:20_000]
    assert len(text) == 20_000
    a.bus.publish(["chat:c1"], delta(text, seq=9))
    await eventually(lambda: len(_texts(b)) >= 20_000)
    pieces = b.events()
    assert len(pieces) > 1
    assert all(isinstance(e, TextDelta) and e.seq == 9 for e in pieces)
    assert _texts(b) == text


def _texts(one: Replica) -> str:
    return "".join(e.text for e in one.events() if isinstance(e, TextDelta))


async def test_huge_finished_reply_is_read_from_the_store(replica: Make) -> None:
    a, b = await replica(), await replica()
    b.bus.watch("chat:c1")
    await b.bus.watching(["chat:c1"])

    finished = ReplyFinished("c1", "m1", 12, "x" * 1_000_000, Usage(3, 4, True), "stop", 2.5)
    a.bus.publish(["chat:c1"], finished)
    await eventually(lambda: b.delivered)
    assert b.delivered == [(["chat:c1"], dataclasses.replace(finished, content=STORED_TEXT))]
    assert b.loads == [("c1", "m1")]
    assert a.loads == []


# -- control messages ---------------------------------------------------------------


async def test_broadcast_reaches_the_others_not_oneself(replica: Make) -> None:
    a, b = await replica(), await replica()
    a.bus.broadcast({"cancel": {"task_id": "t1", "chat_id": "c1"}})
    await eventually(lambda: b.controls)
    assert b.controls == [{"cancel": {"task_id": "t1", "chat_id": "c1"}, "from": a.bus.replica_id}]

    # B's reply to it follows A's own message on the control channel: once A has B's,
    # it has handled (and dropped) its own.
    b.bus.broadcast({"ack": "t1"})
    await eventually(lambda: a.controls)
    assert a.controls == [{"ack": "t1", "from": b.bus.replica_id}]


# -- shared registries ---------------------------------------------------------------


async def test_running_replies_are_listed_by_the_others(replica: Make) -> None:
    a, b = await replica(), await replica()
    task = TaskInfo("t1", "c1", "m1", "u1", ("user:u1", "chat:c1"))
    a.bus.task_started(task)
    listed = await eventually_async(b.bus.remote_tasks)
    assert listed == [TaskInfo("t1", "c1", "m1", "u1", ("user:u1", "chat:c1"), a.bus.replica_id)]
    assert await a.bus.remote_tasks() == []

    a.bus.task_ended("t1")
    await eventually_async(_none_listed(b))
    assert await a.bus.remote_tasks() == []


def _none_listed(one: Replica) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await one.bus.remote_tasks() == []

    return check


async def test_presence_reaches_the_others_after_a_heartbeat(replica: Make) -> None:
    a, b = await replica(), await replica()
    seats = [Seat("socketio", "u1"), Seat("nadoo-chat", "u2", "s1")]
    a.bus.presence_changed(seats)
    await eventually(b.bus.remote_seats, timeout_s=3)
    assert sorted(b.bus.remote_seats(), key=repr) == sorted(seats, key=repr)
    assert a.bus.remote_seats() == []


# -- failures ---------------------------------------------------------------------


async def test_a_dead_replicas_replies_are_ended_once(replica: Make) -> None:
    a, b, c = await replica(), await replica(), await replica()
    task = TaskInfo("t1", "c1", "m1", "u1", ("user:u1",))
    a.bus.task_started(task)
    await eventually_async(b.bus.remote_tasks)
    await a.crash()

    # Heartbeat TTL 5 s + grace 3 s + janitor period 2 s, and some slack.
    await eventually(lambda: b.orphans or c.orphans, timeout_s=15)
    await asyncio.sleep(2.5)  # one more janitor round each: nobody ends it again
    assert b.orphans + c.orphans == [
        TaskInfo("t1", "c1", "m1", "u1", ("user:u1",), a.bus.replica_id)
    ]
    assert await b.bus.remote_tasks() == [] and await c.bus.remote_tasks() == []
    # Gone from the registry itself, not only hidden because A is dead.
    assert await b.bus._all_tasks() == []


async def test_redis_down_and_back_watched_rooms_are_received_again(
    redis_server: RedisServer, replica: Make
) -> None:
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    b.bus.watch("user:x")
    await b.bus.watching(["user:x"])
    assert b.bus.problem() is None
    a.bus.publish(["user:x"], delta("before", 0))
    await eventually(lambda: b.delivered)

    redis_server.stop()
    problem = await eventually(b.bus.problem)
    assert "unreachable" in problem
    await asyncio.sleep(0.5)  # a few failed reconnections
    assert b.bus.problem() is not None

    redis_server.start()  # empty: B's subscriptions must be made again
    await eventually(lambda: b.bus.problem() is None, timeout_s=10)
    await eventually(lambda: a.bus.problem() is None, timeout_s=10)
    after = delta("after", 1)
    a.bus.publish(["user:x"], after)
    await eventually(lambda: after in b.events())
    assert b.events() == [delta("before", 0), after]


async def test_events_published_while_redis_is_down_are_delivered_after(
    redis_server: RedisServer, replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    b.bus.watch("user:x")
    await b.bus.watching(["user:x"])

    redis_server.stop()
    await eventually(b.bus.problem)
    # Listeners retry 0.1, 0.3, 0.7, 1.5, 3.1 s after losing Redis: 2 s in, A's and B's
    # both wait for their 3.1 s try when a reply that keeps streaming publishes.
    await asyncio.sleep(2.0)
    during = [delta(f"during {seq}", seq) for seq in range(3)]
    for event in during:
        a.bus.publish(["user:x"], event)
    # A holds them (not out of the bound: 3 < max_pending) until it knows again who
    # watches what: sending at the first chance would reach no subscriber yet.
    assert [seq for seq in _queued_seqs(a)] == [0, 1, 2]
    redis_server.start()

    await eventually(lambda: b.bus.problem() is None, timeout_s=10)
    await eventually(
        lambda: len(b.delivered) >= 3, timeout_s=5, what="the events queued while down reach B"
    )
    assert b.events() == during


async def test_queue_is_bounded_while_redis_is_down(
    redis_server: RedisServer, replica: Make
) -> None:
    a = await replica(redis_server.url, max_pending=10)
    b = await replica(redis_server.url)
    b.bus.watch("user:x")  # else A has no reason to send anything
    await b.bus.watching(["user:x"])
    redis_server.stop()
    await eventually(a.bus.problem)

    for seq in range(100):
        a.bus.publish(["user:x"], delta(f"{seq}", seq))
        assert len(a.bus._events) <= 10
    # The newest are kept.
    assert _queued_seqs(a) == list(range(90, 100))
    # The sender's failed tries put their batch back without passing the bound.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert len(a.bus._events) <= 10
        await asyncio.sleep(0.02)
    redis_server.start()  # so that closing the bus is not a series of retries


def _queued_seqs(one: Replica) -> list[int]:
    """The seqs of the room events queued (commands wait in a queue of their own)."""
    seqs = []
    for rooms, message in one.bus._events:
        assert rooms == ["user:x"]
        _, event, _ = wire.decode(message)
        assert isinstance(event, TextDelta)
        seqs.append(event.seq)
    return seqs
