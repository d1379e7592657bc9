"""Each message on its own: a malformed one is counted and skipped (never a reconnect),
and a slow handler (a command, a takeover, a store read) holds up nobody else."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
import redis.asyncio as aioredis

from gateway.bus import TaskInfo, replicas, wire
from gateway.bus.replicas import RedisReplicas
from gateway.bus.rooms import RedisRooms
from gateway.events import ReplyFinished, Usage
from tests.bus.support import STORED_TEXT, Make, delta, eventually, eventually_async, watched

LOST = "bus listener lost Redis"


def still_connected(caplog: pytest.LogCaptureFixture, *parts: RedisRooms | RedisReplicas) -> None:
    """Nothing was taken for a lost connection: one connection each, no reconnect."""
    for part in parts:
        assert part._listener.connections == 1 and part._listener.listening
        assert part.problem() is None
    assert LOST not in caplog.text and "reconnected" not in caplog.text


def body(shaped: object) -> bytes:
    return json.dumps(shaped).encode()


GOOD_EVENT = {"t": "TextDelta", "chat_id": "c1", "message_id": "m1", "seq": 1, "text": "x"}

MALFORMED_ROOM_MESSAGES = [
    b"no header at all",
    b"zz 1\n{not json",
    b"zz 2\n" + body({"rooms": ["user:x"], "e": {**GOOD_EVENT, "t": "NoSuchEvent"}}),
    b"zz 3\n" + body({"rooms": ["user:x"], "e": {**GOOD_EVENT, "seq": "seven"}}),
    b"zz 4\n" + body({"rooms": ["user:x"], "e": {**GOOD_EVENT, "text": 5}}),
    b"zz 5\n" + body({"rooms": ["user:x"], "e": {**GOOD_EVENT, "chat_id": ["c1"]}}),
    b"zz 6\n" + body({"rooms": "user:x", "e": GOOD_EVENT}),
    b"zz 7\n" + body({"rooms": ["user:x"], "e": {"t": "TextDelta", "seq": 1}}),
    b"zz 8\n" + body({"rooms": ["user:x"], "e": {**GOOD_EVENT, "usage": {}, "extra": 1}}),
    b"zz 9\n" + '{"rooms": ["user:x"], "e": {"t": "TextDelta", "text": "é'.encode("latin-1"),
    b"zz 10\n" + body([1, 2, 3]),
]
MALFORMED_ANNOUNCEMENTS = [
    b"{}",
    body({"bus": "watch", "rooms": "user:x", "from": "zz"}),
    body({"bus": "watch", "rooms": ["user:x"], "from": 7}),
    body({"bus": "explode", "rooms": [], "from": "zz"}),
]
MALFORMED_COMMANDS = [
    b"not json",
    b"[1, 2]",
    body({"cancel": {"task_id": "t1"}}),  # from nobody
    body({"cancel": {"task_id": "t1"}, "from": 7}),
    b"\xff\xfe\xfd",
]


async def test_malformed_room_messages_are_counted_and_skipped(
    replica: Make, raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus")
    a, b = await replica(), await replica()
    await watched(b, "user:x", told=[a])

    for message in MALFORMED_ANNOUNCEMENTS:
        await raw.publish(f"{prefix}mirror", message)
    for message in MALFORMED_ROOM_MESSAGES:
        await raw.publish(f"{prefix}room:user:x", message)
    good = delta("after the garbage")
    a.rooms.publish(["user:x"], good)  # sent after the garbage: B handles it after, too

    await eventually(lambda: b.delivered)
    assert b.events() == [good]
    assert b.rooms.malformed == len(MALFORMED_ANNOUNCEMENTS) + len(MALFORMED_ROOM_MESSAGES)
    still_connected(caplog, a.rooms, b.rooms)
    # Logged, but not once per message.
    warned = [r for r in caplog.records if r.getMessage() == "bus skipped malformed messages"]
    assert 1 <= len(warned) <= 2  # A's (the announcements) and B's first

    # The mirror took none of the garbage for a watcher.
    assert b.rooms._mirror.replicas() == {a.replicas.replica_id}


async def test_malformed_commands_are_counted_and_skipped(
    replica: Make, raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus")
    a, b = await replica(), await replica()

    for message in MALFORMED_COMMANDS:
        await raw.publish(f"{prefix}control", message)
    a.replicas.broadcast({"cancel": {"task_id": "t1"}})

    await eventually(lambda: b.controls)
    assert b.controls == [{"cancel": {"task_id": "t1"}, "from": a.replicas.replica_id}]
    assert b.replicas.malformed == len(MALFORMED_COMMANDS)
    still_connected(caplog, a.replicas, b.replicas)


async def test_a_slow_command_holds_up_neither_room_events_nor_other_commands(
    replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await replica(), await replica()
    await watched(b, "user:x", told=[a])
    b.control_gate = asyncio.Event()  # B's cancellation waits for a reply that will not end

    a.replicas.broadcast({"cancel": {"task_id": "t1"}})
    await eventually(lambda: b.controls)
    event = delta("meanwhile")
    a.rooms.publish(["user:x"], event)
    await eventually(lambda: event in b.events(), timeout_s=1, what="an event while stuck")
    a.replicas.broadcast({"cancel": {"task_id": "t2"}})
    await eventually(lambda: len(b.controls) == 2, timeout_s=1, what="a command while stuck")
    assert [c["cancel"]["task_id"] for c in b.controls] == ["t1", "t2"]
    b.control_gate.set()
    still_connected(caplog, b.rooms, b.replicas)


async def test_a_slow_takeover_holds_up_no_room_event(
    replica: Make, raw: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Death noticed within about 2 s instead of 10.
    monkeypatch.setattr(replicas, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(replicas, "REPLICA_TTL_S", 1)
    monkeypatch.setattr(replicas, "MISSING_GRACE_S", 0.5)
    monkeypatch.setattr(replicas, "JANITOR_S", 0.2)
    a, b = await replica(), await replica()
    await watched(b, "user:x", told=[a])
    b.orphan_gate = asyncio.Event()  # the survivor's store read of the orphan hangs
    a.replicas.task_started(TaskInfo("t1", "c1", "m1", "u1", ("user:x",)))
    await eventually_async(b.replicas.remote_tasks)
    await a.crash()

    await eventually(lambda: b.orphans, timeout_s=10, what="B takes the reply over")
    # Another replica's event, while B's takeover is stuck on the store.
    event = delta("meanwhile")
    message = wire.message("c0ffee", 1, wire.body(["user:x"], event))
    await raw.publish(f"{prefix}room:user:x", message)
    await eventually(lambda: event in b.events(), timeout_s=1, what="an event while stuck")
    b.orphan_gate.set()
    await eventually_async(lambda: _registry_empty(b.replicas))


async def _registry_empty(registry: RedisReplicas) -> bool:
    return await registry._all_tasks() == []


async def test_a_slow_store_read_holds_up_only_its_own_replicas_events(
    replica: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = await replica(), await replica(), await replica()
    await watched(b, "chat:c1", told=[a, c])
    b.load_gate = asyncio.Event()

    finished = ReplyFinished("c1", "m1", 12, "x" * 1_000_000, Usage(3, 4, True), "stop", 2.5)
    after = delta("A's next event", message_id="m2")
    a.rooms.publish(["chat:c1"], finished)  # travels without its text: B reads the store
    a.rooms.publish(["chat:c1"], after)
    await eventually(lambda: b.loads)
    other = delta("C's event", message_id="m3")
    c.rooms.publish(["chat:c1"], other)
    await eventually(lambda: other in b.events(), timeout_s=1, what="C's event while reading")
    assert b.events() == [other]  # A's wait, in order, behind the read

    b.load_gate.set()
    await eventually(lambda: len(b.delivered) == 3)
    assert b.events() == [other, dataclasses.replace(finished, content=STORED_TEXT), after]
    still_connected(caplog, b.rooms)
