"""Who is connected, by connection: for `GET /ws/stats` and "is anyone watching?".

Every realtime connection registers here while it is open::

    conn id → Seat(kind, user_id, session)
        kind     "socketio" | "nadoo-chat" | "nadoo-workspace" | "nadoo-notifications"
                 | "ragflow"
        session  a Nadoo chat session id as the client named it (the session is
                 the user's own), "workspace_<id>" for a workspace, or None

A user is *watching* while one of their connections can show a reply
(Socket.IO, a Nadoo chat, a RAGFlow socket); a reply that finishes while
nobody watches becomes a notification.  With several replicas, each shares
its seats through the replica registry (`gateway/bus/replicas.py`: written
with its heartbeat, about once a second), and counts are summed across them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from gateway.bus import Seat

__all__ = ["CHAT_KINDS", "Presence", "Seat", "SeatSharing", "stats"]

CHAT_KINDS = frozenset({"socketio", "nadoo-chat", "ragflow"})


class SeatSharing(Protocol):
    """How the other replicas' seats are known: the replica registry (`bus.Replicas`)."""

    replica_id: str

    def presence_changed(self, seats: list[Seat]) -> None: ...

    def remote_seats(self) -> list[Seat]: ...

    def remote_counts(self) -> dict[str, int]: ...


class Presence:
    def __init__(self, shared: SeatSharing | None = None) -> None:
        self._seats: dict[str, Seat] = {}
        self._shared = shared

    def add(self, conn_id: str, seat: Seat) -> None:
        self._seats[conn_id] = seat
        self._changed()

    def remove(self, conn_id: str) -> None:
        if self._seats.pop(conn_id, None) is not None:
            self._changed()

    def _changed(self) -> None:
        if self._shared is not None:
            self._shared.presence_changed(list(self._seats.values()))

    def here(self, conn_id: str) -> Seat | None:
        """A connection of this replica's, by its id."""
        return self._seats.get(conn_id)

    def watching(self, user_id: str) -> bool:
        return any(s.user_id == user_id and s.kind in CHAT_KINDS for s in self.seats())

    def seats(self) -> list[Seat]:
        """Every replica's (the others' as of their last heartbeat, about a second ago)."""
        remote = self._shared.remote_seats() if self._shared is not None else []
        return [*self._seats.values(), *remote]

    def by_replica(self) -> dict[str, int]:
        """Connections per replica, by replica id (this one first)."""
        if self._shared is None:
            return {"local": len(self._seats)}
        return {self._shared.replica_id: len(self._seats), **self._shared.remote_counts()}


def stats(
    seats: list[Seat], viewer: str | None = None, replicas: dict[str, int] | None = None
) -> dict[str, Any]:
    """Nadoo's `/ws/stats` shape::

    {"total_connections", "active_sessions", "active_users",
     "details": {"sessions": {id | "workspace_<id>": n}, "users": {user id: n},
                 "kinds": {kind: n}, "replicas": {replica id: n}}}

    The totals count everyone (numbers name nobody); `details` lists only the
    `viewer`'s own connections, or everyone's when `viewer` is None (an admin);
    `kinds` (by connection kind) and `replicas` (connections per replica) are
    an admin's only.
    """
    # A chat session is its user's (two users' "s1" are two sessions); a workspace is shared.
    sessions = {
        (seat.user_id if seat.kind == "nadoo-chat" else None, seat.session)
        for seat in seats
        if seat.session is not None
    }
    shown = seats if viewer is None else [seat for seat in seats if seat.user_id == viewer]
    details: dict[str, Any] = {
        "sessions": dict(Counter(s.session for s in shown if s.session is not None)),
        "users": dict(Counter(s.user_id for s in shown)),
    }
    if viewer is None:
        details["kinds"] = dict(Counter(s.kind for s in seats))
        details["replicas"] = replicas if replicas is not None else {"local": len(seats)}
    return {
        "total_connections": len(seats),
        "active_sessions": len(sessions),
        "active_users": len({seat.user_id for seat in seats}),
        "details": details,
    }
