"""A reply waits for a crowded bus before it reads its model server again.

With Redis, each event of a reply watched on another replica waits in the
bus's queue to be published (`gateway/bus/link.py`'s `Sender`).  When this
replica's loop is too busy to send them as fast as its replies make them,
the queue would reach its bound and drop the oldest: ends of replies among
them, for clients on the other replicas.  Instead, from half the bound the
bus is crowded, and the runner awaits `room()` after publishing: the reply
is read no further until the queue has drained, so it slows down (and its
model server with it) and loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from gateway.bus.memory import LocalBus
from gateway.chat.runner import ReplyRunner
from gateway.chat.running import Running, RunningReplies
from gateway.events import Event, ReplyFinished, ReplyStarted, TextDelta, Usage
from gateway.fanout.presence import Presence

CHAT, MESSAGE = "c1", "a1"


class CrowdedBus(LocalBus):
    """A bus whose queue is crowded until the test drains it."""

    def __init__(self) -> None:
        self.queued = True
        self.drained = asyncio.Event()
        self.waits = 0

    def crowded(self) -> bool:
        return self.queued

    async def room(self) -> None:
        self.waits += 1
        await self.drained.wait()


class RecordingHub:
    def __init__(self, bus: LocalBus) -> None:
        self.bus = bus
        self.published: list[Event] = []

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        self.published.append(event)

    def reply_event(self, user_id: str, rooms: Sequence[str], event: Event) -> None:
        self.publish(rooms, event)


async def test_a_reply_reads_no_further_while_the_bus_is_crowded() -> None:
    bus = CrowdedBus()
    hub = RecordingHub(bus)
    registry = RunningReplies(cast(Any, None), cast(Any, hub))
    runner = ReplyRunner(cast(Any, None), cast(Any, hub), registry, Presence(), 1.0)
    running = Running("task-1", CHAT, MESSAGE, "alice", ["user:alice"])
    read: list[int] = []  # what the model server was asked for, by seq

    async def upstream() -> AsyncGenerator[Event, None]:
        read.append(0)
        yield ReplyStarted(CHAT, MESSAGE, 0, "alice", "u1", "m", 1700000000.0)
        for seq in range(1, 6):
            read.append(seq)
            yield TextDelta(CHAT, MESSAGE, seq, f"w{seq} ")
        read.append(6)
        yield ReplyFinished(CHAT, MESSAGE, 6, "", Usage(1, 5), "stop", 0.1)

    async def opening() -> AsyncGenerator[Event, None]:
        return upstream()

    runner.start(running, opening)
    task = running.task
    assert task is not None
    await asyncio.sleep(0.2)
    # The first event went out (here and to the bus's queue); then the reply waited.
    assert [type(event) for event in hub.published] == [ReplyStarted]
    assert read == [0] and bus.waits == 1 and not task.done()

    bus.queued = False  # drained to a quarter: the waiters go on, and so does the reply
    bus.drained.set()
    await asyncio.wait_for(task, 5)
    assert read == list(range(7))
    assert [getattr(event, "seq", None) for event in hub.published] == list(range(7))
    assert isinstance(hub.published[-1], ReplyFinished)
    assert bus.waits == 1  # not crowded any more: no wait per event


async def test_a_reply_on_a_bus_that_is_never_crowded_never_waits() -> None:
    bus = CrowdedBus()
    bus.queued = False
    hub = RecordingHub(bus)
    registry = RunningReplies(cast(Any, None), cast(Any, hub))
    runner = ReplyRunner(cast(Any, None), cast(Any, hub), registry, Presence(), 1.0)
    running = Running("task-1", CHAT, MESSAGE, "alice", ["user:alice"])

    async def upstream() -> AsyncGenerator[Event, None]:
        yield ReplyStarted(CHAT, MESSAGE, 0, "alice", "u1", "m", 1700000000.0)
        yield TextDelta(CHAT, MESSAGE, 1, "hi")
        yield ReplyFinished(CHAT, MESSAGE, 2, "", Usage(1, 1), "stop", 0.1)

    async def opening() -> AsyncGenerator[Event, None]:
        return upstream()

    runner.start(running, opening)
    assert running.task is not None
    await asyncio.wait_for(running.task, 5)
    assert len(hub.published) == 3 and bus.waits == 0
