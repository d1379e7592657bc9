"""What replicas share, as two small parts with a protocol each.

A `Bus` is a room fan-out: the hub delivers to this process's connections,
the bus carries the same events to the other replicas and brings theirs in::

    Hub.publish(rooms, e) ──▶ local outboxes
                          └──▶ bus.publish(rooms, e) ──▶ other replicas' Hub.deliver

A `Replicas` is the registry of the replicas themselves: who is alive
(heartbeats), the replies running on each (tasks), who is connected where
(presence, Engine.IO sessions), commands to all of them (stop a reply
wherever it runs), the messages being answered (one reply at a time into
each, across replicas), and the replies of a replica that died (ended by
one survivor).  Its callers get it explicitly: `chat/running.py` (tasks,
commands, orphans), `fanout/presence.py` (seats), the Socket.IO front door
(sessions).

                 one process (the default)     WEBSOCKET_MANAGER=redis
    Bus          memory.LocalBus               rooms.RedisRooms
    Replicas     memory.LocalReplicas          replicas.RedisReplicas

A `Journal` is the replay buffer: every event of a stored reply, kept while
it runs and a while after (`GATEWAY_REPLAY_TTL_S`), so a client that lost its
connection can ask for what it missed, here or on another replica
(`fanout/follow.py` reads it)::

                 one process (the default)     WEBSOCKET_MANAGER=redis
    Journal      memory.LocalJournal           journal.RedisJournal (a stream per reply)

`Locks` holds one lock per key (a chat's edits, one at a time): in one
process an `asyncio.Lock` per key; on Redis, the same in each replica and
then Redis's own, so edits reaching two replicas are one after the other too::

                 one process (the default)     WEBSOCKET_MANAGER=redis
    Locks        memory.LocalLocks             locks.RedisLocks

`make.make_bus` builds the three (`make.make_locks` the locks).  Rooms named
`conn:` and `reply:` belong to one connection or one HTTP response, always
local: they never leave the process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.events import AnyReplyEvent, Event, ReplyFailed, ReplyFinished, ReplyStarted

LOCAL_ROOM_PREFIXES = ("conn:", "reply:")

Deliver = Callable[[list[str], Event], None]
LoadContent = Callable[[str, str], Awaitable[str | None]]
OnControl = Callable[[dict[str, Any]], Awaitable[None]]
OnOrphan = Callable[["TaskInfo"], Awaitable[None]]


def is_local(room: str) -> bool:
    return room.startswith(LOCAL_ROOM_PREFIXES)


def room_set(rooms: Iterable[str]) -> list[str]:
    """The rooms that may have members on other replicas."""
    return [room for room in rooms if not is_local(room)]


class Bus(Protocol):
    """A room fan-out between replicas."""

    async def start(self, deliver: Deliver, load: LoadContent) -> None:
        """Begin carrying: `deliver` gets other replicas' events, `load(chat_id,
        message_id)` reads a stored reply's text (for events too big to carry)."""
        ...

    async def close(self) -> None: ...

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        """To the other replicas; never blocks (bounded; held while unreachable)."""
        ...

    def crowded(self) -> bool:
        """Events are published faster than they go out: a producer that can
        wait (a reply, between two reads of its model server) should `room()`."""
        ...

    async def room(self) -> None:
        """Until no longer crowded, or a short while at most."""
        ...

    def watch(self, room: str) -> None:
        """This replica has a member in `room` now: receive it."""
        ...

    def unwatch(self, room: str) -> None: ...

    async def watching(self, rooms: Iterable[str]) -> None:
        """Until the rooms are received (so nothing published after this is missed)."""
        ...

    def problem(self) -> str | None:
        """None while healthy; else what is wrong, for `/ready`."""
        ...


@dataclass(frozen=True, slots=True)
class Seat:
    """One open connection, as presence counts it on every replica::

    kind     "socketio" | "nadoo-chat" | "nadoo-workspace" | "nadoo-notifications" | "ragflow"
    session  a Nadoo chat session id, "workspace_<id>" for a workspace, or None
    """

    kind: str
    user_id: str
    session: str | None = None


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A reply running somewhere (Open WebUI's "task"), as every replica sees it."""

    task_id: str
    chat_id: str
    message_id: str
    user_id: str
    rooms: tuple[str, ...]
    replica: str = ""


@dataclass(frozen=True, slots=True)
class Replay:
    """What the replay buffer holds of one reply: its events in `seq` order, from
    its first (`complete`) unless the buffer's bound cut the oldest."""

    chat_id: str
    user_id: str
    events: list[AnyReplyEvent]

    @property
    def complete(self) -> bool:
        return bool(self.events) and self.events[0].seq == 0

    @property
    def ended(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], ReplyFinished | ReplyFailed)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else -1


@dataclass(frozen=True, slots=True)
class KeptReply:
    """A reply the buffer keeps, as the user's list shows it (wall-clock ms)."""

    chat_id: str
    message_id: str
    started_ms: int
    ended_ms: int | None


def started_ms(event: Event) -> int:
    """When a reply began, as its kept list says (wall clock, ms): its start event's
    own time, or now for a reply first seen later."""
    if isinstance(event, ReplyStarted):
        return int(event.started_at * 1000)
    return int(time.time() * 1000)


class Unreachable(Exception):
    """The registry cannot be reached (Redis down): what runs elsewhere is unknown."""


class Locks(Protocol):
    """`async with locks(key):` one holder of `key` at a time (across replicas when
    they share Redis)."""

    def __call__(self, key: str) -> AbstractAsyncContextManager[None]: ...

    async def close(self) -> None: ...


class Journal(Protocol):
    """The replay buffer, keyed by (user id, message id): a user's replies only ever
    land in, and are read from, the user's own part.

    `lag_s`: how far behind the events published on other replicas a read may be
    (0 in one process); a reader that must not miss any reads again after it."""

    lag_s: float

    def record(self, user_id: str, event: Event) -> None:
        """One event of a stored reply, as it is published (others are ignored);
        never blocks."""
        ...

    async def read(self, user_id: str, message_id: str) -> Replay | None:
        """The reply's kept events; None when the buffer has none (never kept, expired)."""
        ...

    async def replies_of(self, user_id: str) -> list[KeptReply]:
        """The user's replies the buffer keeps (running, or ended within the TTL)."""
        ...

    async def close(self) -> None: ...


class Sessions(Protocol):
    """Where each Engine.IO session lives, so a misrouted poll can be explained."""

    def session_opened(self, sid: str) -> None: ...

    def session_closed(self, sid: str) -> None: ...

    async def session_replica(self, sid: str) -> str | None:
        """The live replica holding an Engine.IO session, if another one does."""
        ...


class Replicas(Sessions, Protocol):
    """The registry of replicas: liveness, tasks, presence, sessions, commands."""

    replica_id: str

    async def start(self, on_control: OnControl, on_orphan: OnOrphan) -> None:
        """Begin: `on_control` gets other replicas' commands (`broadcast`), `on_orphan`
        each reply of a replica that died (on one survivor, to end it cleanly)."""
        ...

    async def close(self) -> None: ...

    def problem(self) -> str | None: ...

    def broadcast(self, message: dict[str, Any]) -> None:
        """A command to every other replica."""
        ...

    def task_started(self, task: TaskInfo) -> None: ...

    def task_ended(self, task_id: str) -> None: ...

    async def claim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> str | None:
        """Hold messages for replies about to be started into them here: None, or
        the first of them another replica holds (nothing is then held) — in this
        chat, or (given `user_id`) under the same id in another of the user's
        chats, whose events would reach every follower of either.  Held until
        `unclaim`, or until the holder dies and a survivor has ended its replies.
        Fails open (None) while the registry cannot be reached."""
        ...

    def unclaim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        """Let go of messages `claim`ed here (never blocks)."""
        ...

    async def remote_tasks(self, *, strict: bool = False) -> list[TaskInfo]:
        """Replies running on the other live replicas ([] while the registry cannot be
        reached; `strict`: `Unreachable` then, for a caller to whom "none" and "cannot
        tell" differ)."""
        ...

    async def claimed_elsewhere(self) -> set[tuple[str, str]]:
        """The messages (chat id, message id) the other live replicas hold for replies
        being started or run into them (`claim`); `Unreachable` while the registry
        cannot be reached.  A claim is taken, and waited for, before a reply's row
        is written; its entry in `remote_tasks` may come a little after."""
        ...

    def presence_changed(self, seats: list[Seat]) -> None: ...

    def remote_seats(self) -> list[Seat]:
        """The other live replicas' connections (refreshed about once a second)."""
        ...

    def remote_counts(self) -> dict[str, int]:
        """How many connections each other live replica has, by its id."""
        ...
