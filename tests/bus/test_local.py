"""The in-process pair, and `make_bus` choosing between it and Redis."""

from __future__ import annotations

from gateway.bus import Bus, Replicas, TaskInfo
from gateway.bus.make import make_bus
from gateway.bus.memory import LocalBus, LocalReplicas
from gateway.bus.replicas import RedisReplicas
from gateway.bus.rooms import RedisRooms
from gateway.chat.running import RunningReplies
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence, Seat
from tests.bus.support import SHARED_URL, delta


async def test_alone_nothing_is_carried_and_nothing_is_remote() -> None:
    bus, replicas = make_bus(None)
    assert isinstance(bus, LocalBus) and isinstance(replicas, LocalReplicas)
    await replicas.start(_ignore, _ignore)
    await bus.start(lambda rooms, event: None, _load)
    bus.watch("user:x")
    bus.publish(["user:x"], delta("here only"))
    await bus.watching(["user:x"])
    replicas.task_started(TaskInfo("t1", "c1", "m1", "u1", ("user:x",)))
    replicas.presence_changed([Seat("socketio", "u1")])
    assert await replicas.remote_tasks() == []
    assert replicas.remote_seats() == []
    assert await replicas.session_replica("sid") is None
    assert bus.problem() is None and replicas.problem() is None
    await bus.close()
    await replicas.close()


async def test_on_redis_the_rooms_share_the_registrys_replica_id() -> None:
    bus, replicas = make_bus(SHARED_URL, "t-never-started:", 4096)
    assert isinstance(bus, RedisRooms) and isinstance(replicas, RedisReplicas)
    assert bus.replica_id == replicas.replica_id
    # Never started: nothing to stop but the (unconnected) pools.
    for part in (bus, replicas):
        await part._redis.aclose()
        await part._listener.close()


def test_callers_take_the_registry_they_are_given() -> None:
    bus: Bus = LocalBus()
    registry: Replicas = LocalReplicas()
    hub = Hub(8, bus=bus)
    assert RunningReplies(store=None, hub=hub, replicas=registry).replicas is registry  # type: ignore[arg-type]
    assert RunningReplies(store=None, hub=hub).replicas.replica_id  # type: ignore[arg-type]
    assert Presence(registry).seats() == []


async def _ignore(_: object) -> None:
    return None


async def _load(chat_id: str, message_id: str) -> str | None:
    return None
