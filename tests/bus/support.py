"""What the bus tests share: a replica (a room fan-out and a replica registry on real
Redis, in this process), polling helpers, and the sentinel that proves "nothing
arrived".

Each test has its own key prefix on the shared server (127.0.0.1:6379), or a private
`RedisServer` when it kills Redis.  "Nothing arrived" is proved with a sentinel: an
event published after the one that must not arrive, through the same sender, so the
receiver has handled the first before it sees the sentinel.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.bus import TaskInfo
from gateway.bus.replicas import RedisReplicas
from gateway.bus.rooms import RedisRooms
from gateway.events import Event, TextDelta

SHARED_URL = "redis://127.0.0.1:6379/0"
STORED_TEXT = "the reply as the store has it: é中😀"


class Replica:
    """A room fan-out and a replica registry, as a gateway process has them, and what
    their callbacks were given.  A gate (`asyncio.Event`) set on `control_gate`,
    `orphan_gate` or `load_gate` holds that callback until it is set: a slow handler."""

    def __init__(self, url: str, prefix: str, **options: Any) -> None:
        self.replicas = RedisReplicas(url, prefix)
        self.rooms = RedisRooms(url, self.replicas, prefix, **options)
        self.delivered: list[tuple[list[str], Event]] = []
        self.controls: list[dict[str, Any]] = []
        self.orphans: list[TaskInfo] = []
        self.loads: list[tuple[str, str]] = []
        self.control_gate: asyncio.Event | None = None
        self.orphan_gate: asyncio.Event | None = None
        self.load_gate: asyncio.Event | None = None
        self.crashed = False

    def deliver(self, rooms: list[str], event: Event) -> None:
        self.delivered.append((rooms, event))

    async def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        if self.control_gate is not None:
            await self.control_gate.wait()

    async def on_orphan(self, task: TaskInfo) -> None:
        self.orphans.append(task)
        if self.orphan_gate is not None:  # the store read of `Replies.on_orphan`
            await self.orphan_gate.wait()

    async def load(self, chat_id: str, message_id: str) -> str | None:
        self.loads.append((chat_id, message_id))
        if self.load_gate is not None:
            await self.load_gate.wait()
        return STORED_TEXT

    def events(self) -> list[Event]:
        return [event for _, event in self.delivered]

    async def start(self) -> Replica:
        await self.replicas.start(self.on_control, self.on_orphan)
        await self.rooms.start(self.deliver, self.load)
        return self

    async def close(self) -> None:
        await self.rooms.close()
        await self.replicas.close()

    async def crash(self) -> None:
        """Stop as a killed process would: no goodbye, its keys left to expire."""
        self.crashed = True
        for part in (self.rooms, self.replicas):
            for task in part._tasks:
                task.cancel()
            await asyncio.gather(*part._tasks, return_exceptions=True)
            await part._redis.aclose()
            await part._listener.close()


Make = Callable[..., Awaitable[Replica]]


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
    sender.rooms.publish([room], marker)
    await eventually(lambda: marker in receiver.events())
    receiver.delivered.remove(([room], marker))


async def watched(one: Replica, *rooms: str, told: Sequence[Replica] = ()) -> None:
    """`one` has a member in each room, and each replica in `told` knows it.

    `watching()` returns once Redis has handed the announcement to every replica;
    a replica that has not read it yet would still publish the room to no one,
    so a test that publishes at once waits until its publishers have read it."""
    for room in rooms:
        one.rooms.watch(room)
    await one.rooms.watching(rooms)
    for other in told:
        mirror = other.rooms._mirror
        await eventually(
            lambda mirror=mirror: mirror.synced and len(mirror.watched(rooms)) == len(rooms),
            what=f"replica {other.replicas.replica_id} knows who watches {rooms}",
        )
