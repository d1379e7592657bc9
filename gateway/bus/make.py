"""The bus and the replica registry, built as a pair.

    bus, replicas = make_bus(redis_url or None, prefix, max_message_bytes)
    hub = Hub(…, bus)                     rooms: watch, publish, deliver
    Presence(replicas)                    seats of the other replicas
    RunningReplies(store, hub, replicas)  tasks, stop anywhere, orphans
    …sessions: replicas                   the Socket.IO front door

    await replicas.start(replies.on_control, replies.on_orphan)   first: the heartbeat
    await bus.start(hub.deliver, replies.stored_content)          then the rooms
    …
    await bus.close()                     the last events first
    await replicas.close()                then the tasks' removal, beat, presence

The rooms ask the registry who is alive, so they share its replica id.
`make_journal` builds the replay buffer, on the same Redis when there is one;
`make_locks` the locks of a chat's edits, the same way.
"""

from __future__ import annotations

from gateway.bus import Bus, Journal, Locks, Replicas
from gateway.bus.journal import RedisJournal
from gateway.bus.locks import RedisLocks
from gateway.bus.memory import LocalBus, LocalJournal, LocalLocks, LocalReplicas
from gateway.bus.replicas import RedisReplicas
from gateway.bus.rooms import RedisRooms


def make_bus(
    redis_url: str | None, prefix: str = "gw:", max_message_bytes: int = 256 * 1024
) -> tuple[Bus, Replicas]:
    """On Redis when `redis_url` is given; else in this process alone."""
    if redis_url is None:
        return LocalBus(), LocalReplicas()
    replicas = RedisReplicas(redis_url, prefix)
    return RedisRooms(redis_url, replicas, prefix, max_message_bytes), replicas


def make_journal(redis_url: str | None, prefix: str, max_events: int, ttl_s: float) -> Journal:
    """The replay buffer: on Redis when `redis_url` is given (any replica can read
    it); else in this process."""
    if redis_url is None:
        return LocalJournal(max_events, ttl_s)
    return RedisJournal(redis_url, prefix, max_events, ttl_s)


def make_locks(redis_url: str | None, prefix: str) -> Locks:
    """A lock per key: on Redis when `redis_url` is given (held across replicas);
    else in this process."""
    if redis_url is None:
        return LocalLocks()
    return RedisLocks(redis_url, prefix)
