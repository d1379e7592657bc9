"""RedisReplicas against real Redis: commands to every replica, running replies and
presence listed by the others, and a dead replica's replies ended by one survivor."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from gateway.bus import TaskInfo
from gateway.fanout.presence import Seat
from tests.bus.support import Make, Replica, eventually, eventually_async
from tests.services import RedisServer

# -- control messages ---------------------------------------------------------------


async def test_broadcast_reaches_the_others_not_oneself(replica: Make) -> None:
    a, b = await replica(), await replica()
    a.replicas.broadcast({"cancel": {"task_id": "t1", "chat_id": "c1"}})
    await eventually(lambda: b.controls)
    assert b.controls == [
        {"cancel": {"task_id": "t1", "chat_id": "c1"}, "from": a.replicas.replica_id}
    ]

    # B's reply to it follows A's own message on the control channel: once A has B's,
    # it has handled (and dropped) its own.
    b.replicas.broadcast({"ack": "t1"})
    await eventually(lambda: a.controls)
    assert a.controls == [{"ack": "t1", "from": b.replicas.replica_id}]


# -- shared registries ---------------------------------------------------------------


async def test_running_replies_are_listed_by_the_others(replica: Make) -> None:
    a, b = await replica(), await replica()
    task = TaskInfo("t1", "c1", "m1", "u1", ("user:u1", "chat:c1"))
    a.replicas.task_started(task)
    listed = await eventually_async(b.replicas.remote_tasks)
    assert listed == [
        TaskInfo("t1", "c1", "m1", "u1", ("user:u1", "chat:c1"), a.replicas.replica_id)
    ]
    assert await a.replicas.remote_tasks() == []

    a.replicas.task_ended("t1")
    await eventually_async(_none_listed(b))
    assert await a.replicas.remote_tasks() == []


def _none_listed(one: Replica) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await one.replicas.remote_tasks() == []

    return check


async def test_presence_reaches_the_others_after_a_heartbeat(replica: Make) -> None:
    a, b = await replica(), await replica()
    seats = [Seat("socketio", "u1"), Seat("nadoo-chat", "u2", "s1")]
    a.replicas.presence_changed(seats)
    await eventually(b.replicas.remote_seats, timeout_s=3)
    assert sorted(b.replicas.remote_seats(), key=repr) == sorted(seats, key=repr)
    assert a.replicas.remote_seats() == []


# -- failures


async def test_a_dead_replicas_replies_are_ended_once(replica: Make) -> None:
    a, b, c = await replica(), await replica(), await replica()
    task = TaskInfo("t1", "c1", "m1", "u1", ("user:u1",))
    a.replicas.task_started(task)
    await eventually_async(b.replicas.remote_tasks)
    await a.crash()

    # Heartbeat TTL 5 s + grace 3 s + janitor period 2 s, and some slack.
    await eventually(lambda: b.orphans or c.orphans, timeout_s=15)
    await asyncio.sleep(2.5)  # one more janitor round each: nobody ends it again
    assert b.orphans + c.orphans == [
        TaskInfo("t1", "c1", "m1", "u1", ("user:u1",), a.replicas.replica_id)
    ]
    assert await b.replicas.remote_tasks() == [] and await c.replicas.remote_tasks() == []
    # Gone from the registry itself, not only hidden because A is dead.
    assert await b.replicas._all_tasks() == []


async def test_a_session_is_found_on_the_replica_holding_it(replica: Make) -> None:
    a, b = await replica(), await replica()
    a.replicas.session_opened("eio-1")
    assert await eventually_async(lambda: b.replicas.session_replica("eio-1")) == (
        a.replicas.replica_id
    )
    assert await a.replicas.session_replica("eio-1") is None  # here, not on another one
    a.replicas.session_closed("eio-1")
    await eventually_async(lambda: _not_found(b, "eio-1"))


async def _not_found(one: Replica, sid: str) -> bool:
    return await one.replicas.session_replica(sid) is None


async def test_redis_restarted_empty_learns_again_what_runs_where(
    redis_server: RedisServer, replica: Make
) -> None:
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    task = TaskInfo("t1", "c1", "m1", "u1", ("user:u1",))
    a.replicas.task_started(task)
    a.replicas.session_opened("eio-1")
    await eventually_async(b.replicas.remote_tasks)

    redis_server.stop()
    await eventually(b.replicas.problem)
    redis_server.start()  # empty
    await eventually(lambda: a.replicas.problem() is None, timeout_s=10)
    listed = await eventually_async(b.replicas.remote_tasks, timeout_s=10)
    assert listed == [dataclasses.replace(task, replica=a.replicas.replica_id)]
    assert await eventually_async(lambda: b.replicas.session_replica("eio-1")) == (
        a.replicas.replica_id
    )
    assert b.orphans == [] and a.orphans == []
