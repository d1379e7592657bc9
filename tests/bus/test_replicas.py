"""RedisReplicas against real Redis: commands to every replica, running replies and
presence listed by the others, and a dead replica's replies ended by one survivor."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.bus import TaskInfo, Unreachable
from gateway.bus.claims import UNCLAIM, message_field
from gateway.chat.running import LOOK_AGAIN_S, RunningReplies
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Seat
from gateway.store import ChatRecord, MessageRecord, Store, open_store
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


# -- one reply at a time into a message, across replicas -------------------------------


async def test_a_message_held_by_one_replica_is_refused_to_another(replica: Make) -> None:
    a, b = await replica(), await replica()
    assert await a.replicas.claim("c1", ["m1", "m2"]) is None
    assert await b.replicas.claim("c1", ["m3", "m2"]) == "m2"
    # Refused whole: B holds nothing of it, m3 is free.
    assert await a.replicas.claim("c1", ["m3"]) is None
    assert await a.replicas.claim("c2", ["m1"]) is None  # another chat's m1
    a.replicas.unclaim("c1", ["m1", "m2"])
    await eventually_async(lambda: _claims(b, "c1", ["m1", "m2"]))
    # B's let-go of what it does not hold removes nothing of A's.
    b.replicas.unclaim("c1", ["m3"])
    await a.replicas._sender.drained(2)
    await b.replicas._sender.drained(2)
    assert await b.replicas.claim("c1", ["m3"]) == "m3"


async def _claims(one: Replica, chat_id: str, message_ids: list[str]) -> bool:
    return await one.replicas.claim(chat_id, message_ids) is None


async def test_ids_with_any_characters_are_told_apart(replica: Make) -> None:
    a, b = await replica(), await replica()
    assert await a.replicas.claim('c"1', ["m\x00,1", "é😀"]) is None
    assert await b.replicas.claim('c"1', ["é😀"]) == "é😀"
    assert await b.replicas.claim("c", ['"1", "m']) is None


async def test_a_dead_replicas_messages_are_free_once_its_replies_are_ended(
    replica: Make,
) -> None:
    """Held while its replies are ended by a survivor (the dead one's end must not
    overwrite a new reply), free after, with those it held without a task."""
    a, b = await replica(), await replica()
    a.replicas.task_started(TaskInfo("t1", "c1", "m1", "u1", ("user:u1",)))
    assert await a.replicas.claim("c1", ["m1", "m2"]) is None  # m2: still starting
    await a.replicas._sender.drained(2)
    await a.crash()
    assert await b.replicas.claim("c1", ["m1"]) == "m1"
    await eventually(lambda: b.orphans, timeout_s=15)
    await eventually_async(lambda: _claims(b, "c1", ["m1", "m2"]), timeout_s=5)


async def test_a_redis_that_restarted_empty_learns_what_is_held_again(replica: Make) -> None:
    a, b = await replica(), await replica()
    assert await a.replicas.claim("c1", ["m1"]) is None
    redis = a.replicas._redis
    await redis.delete(a.replicas._key("answering"))  # what an empty restart leaves
    pubsub = redis.pubsub()
    try:
        await a.replicas.connected(pubsub)  # what the listener runs on reconnecting
    finally:
        await pubsub.aclose()
    assert await b.replicas.claim("c1", ["m1"]) == "m1"


async def unfinished_reply(store: Store) -> None:
    """Chat c1: a question, and m1, a reply not finished (its draft "half"), as a reply
    running or one a crash left."""
    rows = [
        MessageRecord("c1", "q", None, "user", "hi"),
        MessageRecord("c1", "m1", "q", "assistant", "", done=False, draft="half"),
    ]
    await store.insert_chat(ChatRecord("c1", "u1", "t", "m1", 100, 100), rows)


async def test_a_recovery_leaves_a_reply_alone_while_another_replica_holds_its_message(
    replica: Make, tmp_path: Path
) -> None:
    """A reply's start holds its message (`claim`, waited for), then writes its row;
    its task is listed after (queued).  A replica that recovers in between read the
    row, then the tasks without it, and finalised the reply as crashed under the
    replica starting it; the messages held elsewhere are now left alone too."""
    a, b = await replica(), await replica()
    store = await open_store("", tmp_path)
    try:
        await unfinished_reply(store)
        assert await a.replicas.claim("c1", ["m1"], "u1") is None
        assert await b.replicas.claimed_elsewhere() == {("c1", "m1")}
        assert await a.replicas.claimed_elsewhere() == set()  # its own are not elsewhere
        assert await b.replicas.remote_tasks() == []
        running = RunningReplies(store, Hub(8), b.replicas)
        assert await running.recover_unfinished() == 0
        assert (await store.get_message("c1", "m1")).done is False  # type: ignore[union-attr]

        # Let go (the reply never started, or ended and its row was written): a crash's.
        a.replicas.unclaim("c1", ["m1"], "u1")
        await a.replicas._sender.drained(2)
        assert await b.replicas.claimed_elsewhere() == set()
        assert await running.recover_unfinished() == 1
        finalised = await store.get_message("c1", "m1")
        assert finalised is not None and finalised.done is True and finalised.content == "half"
    finally:
        await store.close()


async def test_a_reply_held_by_a_replica_that_just_died_is_finalised_once_it_is_seen_dead(
    replica: Make, tmp_path: Path
) -> None:
    """Its message held, its row written, its task not listed yet, and the replica
    dies: a recovery within its heartbeat's life takes it for live and leaves it;
    no survivor ends it (only listed tasks are orphans), so the recovery looks
    again once the replica would be seen dead (`LOOK_AGAIN_S`)."""
    a, b = await replica(), await replica()
    store = await open_store("", tmp_path)
    running: RunningReplies | None = None
    try:
        await unfinished_reply(store)
        assert await a.replicas.claim("c1", ["m1"], "u1") is None
        await a.crash()
        running = RunningReplies(store, Hub(8), b.replicas)
        assert await running.recover_unfinished() == 0  # a is taken for live a while

        async def finalised() -> bool:
            record = await store.get_message("c1", "m1")
            return record is not None and record.done is True and record.content == "half"

        await eventually_async(finalised, timeout_s=LOOK_AGAIN_S + 8)
    finally:
        if running is not None:
            await running.shutdown()
        await store.close()


async def test_a_dead_replicas_held_messages_are_not_held_elsewhere(replica: Make) -> None:
    a, b = await replica(), await replica()
    assert await a.replicas.claim("c1", ["m1"]) is None
    await a.replicas._sender.drained(2)
    assert await b.replicas.claimed_elsewhere() == {("c1", "m1")}
    await a.crash()
    # Its heartbeat expires (5 s): then it is no live replica's.
    await eventually_async(_nothing_held_elsewhere(b), timeout_s=10)


def _nothing_held_elsewhere(one: Replica) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await one.replicas.claimed_elsewhere() == set()

    return check


async def test_with_redis_unreachable_a_claim_holds_nothing_and_waits_for_nothing(
    replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisServer().start()
    try:
        a = await replica(url=redis.url)
        redis.stop()
        await eventually(lambda: not a.replicas._listener.listening, timeout_s=10)
        began = asyncio.get_running_loop().time()
        assert await a.replicas.claim("c1", ["m1"]) is None
        assert asyncio.get_running_loop().time() - began < 0.1
        assert "could not ask Redis whether a message is free" in caplog.text
        with pytest.raises(Unreachable):  # not "nothing is held": a recovery waits
            await a.replicas.claimed_elsewhere()
    finally:
        redis.stop()


async def test_a_late_let_go_leaves_a_new_claim_of_the_same_message(replica: Make) -> None:
    """A reply ends and another starts into its message on the same replica at once:
    the first let-go, queued, may reach Redis after the new claim; it removes nothing
    but its own claim."""
    a, b = await replica(), await replica()
    field = message_field("c1", "m1")
    assert await a.replicas.claim("c1", ["m1"]) is None
    first = a.replicas._claims._claimed[field]
    a.replicas.unclaim("c1", ["m1"])
    await a.replicas._sender.drained(2)
    assert await a.replicas.claim("c1", ["m1"]) is None
    # The first let-go once more, as if it had arrived only now.
    await a.replicas._redis.eval(UNCLAIM, 1, a.replicas._key("answering"), field, first)
    assert await b.replicas.claim("c1", ["m1"]) == "m1"


async def test_a_dead_replicas_message_stays_held_while_its_reply_is_not_ended(
    replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """The survivor could not end the dead replica's reply (its store down): the reply
    stays listed for a later try, and its message stays held meanwhile."""
    a, b = await replica(), await replica()
    a.replicas.task_started(TaskInfo("t1", "c1", "m1", "u1", ("user:u1",)))
    assert await a.replicas.claim("c1", ["m1"]) is None
    await a.replicas._sender.drained(2)

    async def fails(task: TaskInfo) -> None:
        raise RuntimeError("the store is down")

    b.replicas._on_orphan = fails
    await a.crash()
    await eventually(lambda: "could not end a dead replica's reply" in caplog.text, timeout_s=15)
    assert await b.replicas.claim("c1", ["m1"]) == "m1"
    assert [task.task_id for task in await b.replicas._all_tasks()] == ["t1"]


async def test_a_replica_that_closes_lets_go_of_what_it_still_held(replica: Make) -> None:
    a, b = await replica(), await replica()
    assert await a.replicas.claim("c1", ["m1"]) is None  # its let-go never queued
    await a.close()
    a.crashed = True  # closed here: not again by the fixture
    assert await b.replicas.claim("c1", ["m1"]) is None
