"""Which other replica has members in which room: the Redis bus's watcher mirror. Pure.

Every replica announces on the control channel the rooms it watches::

    {"bus": "watch",   "rooms": [...], "reset": true|false}   reset: "and no others"
    {"bus": "unwatch", "rooms": [...]}
    {"bus": "sync"}                                           "everyone, your whole list"

A replica publishes a room only when the mirror says another replica watches
it.  The mirror is *synced* once every replica expected (the live ones, and
those known before a reconnect) has sent its whole list since this replica
(re)connected, or the wait ran out; until then the bus holds room events
rather than drop them for want of a watcher it has not heard of yet.
"""

from __future__ import annotations

from collections.abc import Iterable


class Mirror:
    def __init__(self) -> None:
        self._watchers: dict[str, set[str]] = {}  # room → replicas
        self._rooms: dict[str, set[str]] = {}  # replica → rooms
        self._expected: set[str] = set()
        self._heard: set[str] = set()
        self._deadline = 0.0
        self.synced = False

    # -- what is watched -------------------------------------------------------
    def watched(self, rooms: Iterable[str]) -> list[str]:
        """The rooms some other replica watches."""
        return [room for room in rooms if self._watchers.get(room)]

    def replicas(self) -> set[str]:
        return set(self._rooms)

    def apply(self, sender: str, kind: str, rooms: Iterable[str], reset: bool = False) -> None:
        if kind == "watch":
            if reset:
                self.forget(sender)
                self._heard.add(sender)
            mine = self._rooms.setdefault(sender, set())
            for room in rooms:
                mine.add(room)
                self._watchers.setdefault(room, set()).add(sender)
        elif kind == "unwatch":
            mine = self._rooms.get(sender, set())
            for room in rooms:
                mine.discard(room)
                self._unwatcher(room, sender)

    def forget(self, replica: str) -> None:
        for room in self._rooms.pop(replica, set()):
            self._unwatcher(room, replica)

    def _unwatcher(self, room: str, replica: str) -> None:
        watchers = self._watchers.get(room)
        if watchers is not None:
            watchers.discard(replica)
            if not watchers:
                del self._watchers[room]

    # -- being up to date ------------------------------------------------------------
    def begin_sync(self, expected: Iterable[str], now: float, within_s: float) -> None:
        """After (re)connecting: wait to hear each of `expected`, at most `within_s`."""
        self._expected = set(expected)
        self._heard = set()
        self._deadline = now + within_s
        self.synced = not self._expected

    def lost(self) -> None:
        """The connection to the others is gone: not up to date any more."""
        self.synced = False

    def check(self, now: float) -> bool:
        """Synced now? (every expected replica heard from, or the wait ran out)."""
        if not self.synced and (self._expected <= self._heard or now >= self._deadline):
            self.synced = True
        return self.synced

    def missing(self) -> set[str]:
        return self._expected - self._heard
