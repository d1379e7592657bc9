"""The embedded bus and registry: one process, no other replica to share with.

`LocalBus` carries nothing (the hub has delivered every event already);
`LocalReplicas` is a registry of one: no other replica runs tasks, holds
sessions, has connections or hears commands, and none ever dies under us.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.bus import Deliver, LoadContent, OnControl, OnOrphan, Seat, TaskInfo
from gateway.events import Event


class LocalBus:
    async def start(self, deliver: Deliver, load: LoadContent) -> None:
        return None

    async def close(self) -> None:
        return None

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        return None

    def watch(self, room: str) -> None:
        return None

    def unwatch(self, room: str) -> None:
        return None

    async def watching(self, rooms: Iterable[str]) -> None:
        return None

    def problem(self) -> str | None:
        return None


class LocalReplicas:
    """Only this replica: nothing remote to list, ask or tell."""

    def __init__(self) -> None:
        self.replica_id = uuid.uuid4().hex[:12]

    async def start(self, on_control: OnControl, on_orphan: OnOrphan) -> None:
        return None

    async def close(self) -> None:
        return None

    def problem(self) -> str | None:
        return None

    def broadcast(self, message: dict[str, Any]) -> None:
        return None

    def task_started(self, task: TaskInfo) -> None:
        return None

    def task_ended(self, task_id: str) -> None:
        return None

    async def remote_tasks(self) -> list[TaskInfo]:
        return []

    def session_opened(self, sid: str) -> None:
        return None

    def session_closed(self, sid: str) -> None:
        return None

    async def session_replica(self, sid: str) -> str | None:
        return None

    def presence_changed(self, seats: list[Seat]) -> None:
        return None

    def remote_seats(self) -> list[Seat]:
        return []
