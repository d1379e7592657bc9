"""Delivers events to the connections subscribed to a room, in this process.

Rooms are strings: `user:<id>` (every connection of a user), `chat:<id>`,
`reply:<chat id>/<message id>` (one reply, for the HTTP response that
started it).

Each subscription has a bounded `Outbox` (`outbox.py`: its theory of operation,
from `publish` to the connection's writer, is at the top of that file).

A reply's events are also recorded in the replay buffer (`reply_event`, the
`Journal` of `gateway/bus/`) before they are published, so a client that comes
back can be given what it missed (`follow.py`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Sequence

from gateway.bus import Bus, Journal, is_local
from gateway.bus.memory import LocalBus, LocalJournal
from gateway.edge.metrics import ROOMS
from gateway.events import Event, ReplyFailed, ReplyFinished
from gateway.fanout.outbox import Outbox, Overflow


class Hub:
    """Rooms of this process's connections; other replicas' through `bus`."""

    def __init__(
        self,
        outbox_max_events: int,
        outbox_max_chars: int | None = None,
        bus: Bus | None = None,
        journal: Journal | None = None,
        stall_s: float | None = None,
    ) -> None:
        # A room's members: most rooms have one (a user's only tab, a Nadoo session,
        # a connection's own room), held as the outbox itself; a set from the second
        # (an empty set is 216 bytes, and most connections are idle: `bench_idle`).
        self._rooms: dict[str, Outbox | set[Outbox]] = {}
        self._outbox_max_events = outbox_max_events
        self._outbox_max_chars = outbox_max_chars
        self._stall_s = stall_s
        self.bus: Bus = bus if bus is not None else LocalBus()
        self.journal: Journal = journal if journal is not None else LocalJournal(0, 1.0)
        ROOMS.count = self._rooms.__len__

    def subscribe(
        self,
        rooms: Iterable[str],
        on_overflow: Callable[[], None] | None = None,
        deliver: Callable[[Event], bool] | None = None,
        merge: bool = True,
    ) -> Outbox:
        outbox = Outbox(
            self._outbox_max_events,
            self._outbox_max_chars,
            on_overflow,
            deliver,
            merge,
            self._stall_s,
        )
        for room in rooms:
            self.join(outbox, room)
        return outbox

    def join(self, outbox: Outbox, room: str) -> None:
        members = self._rooms.get(room)
        if members is None:
            self._rooms[room] = outbox
            if not is_local(room):
                self.bus.watch(room)
        elif isinstance(members, Outbox):
            if members is not outbox:
                self._rooms[room] = {members, outbox}
        else:
            members.add(outbox)
        if room not in outbox.rooms:
            outbox.rooms = (*outbox.rooms, room)

    def leave(self, outbox: Outbox, room: str) -> None:
        members = self._rooms.get(room)
        if isinstance(members, set):
            members.discard(outbox)
            if len(members) == 1:
                self._rooms[room] = members.pop()
        elif members is outbox:
            del self._rooms[room]
            if not is_local(room):
                self.bus.unwatch(room)
        outbox.rooms = tuple(joined for joined in outbox.rooms if joined != room)

    async def watching(self, rooms: Iterable[str]) -> None:
        """Until other replicas' events for these rooms arrive here too."""
        await self.bus.watching([room for room in rooms if not is_local(room)])

    def unsubscribe(self, outbox: Outbox) -> None:
        outbox.close()
        for room in outbox.rooms:
            self.leave(outbox, room)

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        """To every member of `rooms`, here and on the other replicas."""
        self.deliver(rooms, event)
        self.bus.publish(rooms, event)

    def reply_event(self, user_id: str, rooms: Sequence[str], event: Event) -> None:
        """A stored reply's event: into the replay buffer, then to `rooms`."""
        self.journal.record(user_id, event)
        self.publish(rooms, event)

    def deliver(self, rooms: Sequence[str], event: Event) -> None:
        """Once to every outbox here in any of `rooms` (an outbox in two rooms gets one copy)."""
        if len(rooms) == 1:  # most replies: a room's members are one each (no `seen`)
            members = self._rooms.get(rooms[0], ())
            if isinstance(members, Outbox):
                members.put(event)
            else:
                for outbox in members:
                    outbox.put(event)
            return
        seen: set[int] = set()
        for room in rooms:
            members = self._rooms.get(room, ())
            for outbox in (members,) if isinstance(members, Outbox) else members:
                if id(outbox) not in seen:
                    seen.add(id(outbox))
                    outbox.put(event)

    def room_sizes(self) -> dict[str, int]:
        return {
            room: 1 if isinstance(members, Outbox) else len(members)
            for room, members in self._rooms.items()
        }


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
