"""What replicas share: events for rooms, control messages, running replies, presence.

The hub delivers to this process's connections; a `Bus` carries the same
events to the other replicas and brings theirs in::

    Hub.publish(rooms, e) ──▶ local outboxes
                          └──▶ bus.publish(rooms, e) ──▶ other replicas' Hub.deliver

`memory.LocalBus` is the embedded default (one process, nothing to share);
`redis.RedisBus` is `WEBSOCKET_MANAGER=redis`.  Rooms named `conn:` and
`reply:` belong to one connection or one HTTP response, always local: they
never leave the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.events import Event
from gateway.fanout.presence import Seat

LOCAL_ROOM_PREFIXES = ("conn:", "reply:")

Deliver = Callable[[list[str], Event], None]
OnControl = Callable[[dict[str, Any]], Awaitable[None]]
OnOrphan = Callable[["TaskInfo"], Awaitable[None]]
LoadContent = Callable[[str, str], Awaitable[str | None]]


def is_local(room: str) -> bool:
    return room.startswith(LOCAL_ROOM_PREFIXES)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A reply running somewhere (Open WebUI's "task"), as every replica sees it."""

    task_id: str
    chat_id: str
    message_id: str
    user_id: str
    rooms: tuple[str, ...]
    replica: str = ""


class Bus(Protocol):
    replica_id: str

    async def start(
        self, deliver: Deliver, on_control: OnControl, on_orphan: OnOrphan, load: LoadContent
    ) -> None:
        """Begin carrying: `deliver` gets other replicas' events, `on_control` their
        commands, `on_orphan` each reply of a replica that died (to end it cleanly),
        `load(chat_id, message_id)` a stored reply's text (for events too big to carry)."""
        ...

    async def close(self) -> None: ...

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        """To the other replicas; never blocks (bounded; dropped while unreachable)."""
        ...

    def watch(self, room: str) -> None:
        """This replica has a member in `room` now: receive it."""
        ...

    def unwatch(self, room: str) -> None: ...

    async def watching(self, rooms: Iterable[str]) -> None:
        """Until the rooms are received (so nothing published after this is missed)."""
        ...

    def broadcast(self, message: dict[str, Any]) -> None:
        """A control message to every other replica."""
        ...

    def task_started(self, task: TaskInfo) -> None: ...

    def task_ended(self, task_id: str) -> None: ...

    async def remote_tasks(self) -> list[TaskInfo]:
        """Replies running on the other live replicas."""
        ...

    def session_opened(self, sid: str) -> None:
        """An Engine.IO session lives here now (so a misrouted poll can be explained)."""
        ...

    def session_closed(self, sid: str) -> None: ...

    async def session_replica(self, sid: str) -> str | None:
        """The live replica holding an Engine.IO session, if another one does."""
        ...

    def presence_changed(self, seats: list[Seat]) -> None: ...

    def remote_seats(self) -> list[Seat]:
        """The other live replicas' connections (refreshed about once a second)."""
        ...

    def problem(self) -> str | None:
        """None while healthy; else what is wrong, for `/ready`."""
        ...


def room_set(rooms: Iterable[str]) -> list[str]:
    """The rooms that may have members on other replicas."""
    return [room for room in rooms if not is_local(room)]
