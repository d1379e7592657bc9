"""The replay buffer, both kinds: what a reply's events become, for how long, within
which bounds, and that one user's part never shows another's.  The Redis one is read
by a second instance, as another replica would."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway.bus import Journal
from gateway.bus.journal import FLUSH_S, RedisJournal
from gateway.bus.memory import LocalJournal
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
    UserTyping,
)
from tests.bus.support import SHARED_URL


def reply(message_id: str, words: int, chat_id: str = "c1", end: bool = True) -> list[Event]:
    events: list[Event] = [ReplyStarted(chat_id, message_id, 0, "u", None, "m", time.time())]
    events += [TextDelta(chat_id, message_id, i + 1, f"w{i} ") for i in range(words)]
    if end:
        text = "".join(f"w{i} " for i in range(words))
        events.append(
            ReplyFinished(chat_id, message_id, words + 1, text, Usage(1, words), "stop", 0.1)
        )
    return events


Made = Callable[..., Journal]


@pytest.fixture
async def redis_journals() -> AsyncIterator[Made]:
    """`make(**options)`: RedisJournals on one fresh key prefix (another replica's view)."""
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    made: list[RedisJournal] = []

    def make(max_events: int = 100, ttl_s: float = 60.0) -> RedisJournal:
        one = RedisJournal(SHARED_URL, prefix, max_events, ttl_s)
        made.append(one)
        return one

    yield make
    for one in made:
        await one.close()
    client = aioredis.Redis.from_url(SHARED_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def flushed() -> None:
    """Longer than a flush takes (the flusher batches for FLUSH_S)."""
    await asyncio.sleep(FLUSH_S * 5)


# -- in this process ------------------------------------------------------------------
async def test_local_keeps_a_reply_in_order_and_lists_it() -> None:
    journal = LocalJournal(100, 60.0)
    for event in reply("m1", 5):
        journal.record("alice", event)
    kept = await journal.read("alice", "m1")
    assert kept is not None
    assert [e.seq for e in kept.events] == list(range(7))
    assert kept.complete and kept.ended and kept.last_seq == 6 and kept.chat_id == "c1"
    (listed,) = await journal.replies_of("alice")
    assert listed.message_id == "m1" and listed.ended_ms is not None


async def test_local_keeps_deltas_out_of_the_garbage_collectors_view() -> None:
    """What a reply is replayed as is what was recorded, and its deltas, however
    many, are not walked by the collector's full collections: kept as tuples of
    strings and numbers, which it stops tracking at its first look."""
    journal = LocalJournal(100, 60.0)
    recorded = reply("m1", 20)
    recorded.insert(3, ReasoningDelta("c1", "m1", 3, "hmm", 0))
    recorded.insert(4, TextDelta("c1", "m1", 3, "an item", 1))
    for event in recorded:
        journal.record("alice", event)
    gc.collect()
    kept = journal._kept["alice", "m1"].events
    deltas = [e for e in kept if type(e) is tuple]
    assert len(deltas) == 22 and not any(map(gc.is_tracked, deltas))
    replayed = await journal.read("alice", "m1")
    assert replayed is not None and replayed.events == recorded


async def test_local_is_per_user() -> None:
    journal = LocalJournal(100, 60.0)
    for event in reply("m1", 3):
        journal.record("alice", event)
    assert await journal.read("bob", "m1") is None
    assert await journal.replies_of("bob") == []


async def test_local_ring_cuts_the_oldest_and_says_it_is_incomplete() -> None:
    journal = LocalJournal(4, 60.0)
    for event in reply("m1", 10, end=False):
        journal.record("alice", event)
    kept = await journal.read("alice", "m1")
    assert kept is not None and [e.seq for e in kept.events] == [7, 8, 9, 10]
    assert not kept.complete and not kept.ended


async def test_local_forgets_an_ended_reply_after_the_ttl_but_not_a_running_one() -> None:
    journal = LocalJournal(100, 0.05)
    for event in reply("done", 2):
        journal.record("alice", event)
    for event in reply("running", 2, end=False):
        journal.record("alice", event)
    await asyncio.sleep(0.1)
    assert await journal.read("alice", "done") is None
    assert await journal.read("alice", "running") is not None
    assert [k.message_id for k in await journal.replies_of("alice")] == ["running"]


async def test_local_bounds_the_number_of_replies_dropping_the_longest_ended() -> None:
    journal = LocalJournal(100, 60.0, max_replies=3)
    for name in ("a", "b", "c"):
        for event in reply(name, 1):
            journal.record("alice", event)
    for event in reply("d", 1, end=False):
        journal.record("alice", event)
    assert await journal.read("alice", "a") is None
    assert {k.message_id for k in await journal.replies_of("alice")} == {"b", "c", "d"}


async def test_local_bounds_the_text_of_ended_replies_dropping_the_longest_ended() -> None:
    # Each reply: 6 events and 3 words of text ("w0 w1 w2 ", and its end's content).
    journal = LocalJournal(100, 60.0, max_ended_chars=1000)
    for name in ("a", "b", "c"):
        for event in reply(name, 3):
            journal.record("alice", event)
    # 6 events of 64 and ~18 characters: ~400 each, so only the last two fit.
    assert await journal.read("alice", "a") is None
    assert {k.message_id for k in await journal.replies_of("alice")} == {"b", "c"}
    for event in reply("running", 50, end=False):
        journal.record("alice", event)  # a running reply is never dropped for it
    assert await journal.read("alice", "running") is not None


async def test_local_off_and_foreign_events_keep_nothing() -> None:
    off = LocalJournal(0, 60.0)
    for event in reply("m1", 2):
        off.record("alice", event)
    assert await off.read("alice", "m1") is None
    journal = LocalJournal(100, 60.0)
    journal.record("alice", UserTyping("s", "alice"))
    journal.record("alice", TextDelta(None, "pure", 1, "x"))  # pure API: no chat
    assert await journal.replies_of("alice") == []


async def test_local_a_reply_run_again_under_its_id_starts_afresh() -> None:
    journal = LocalJournal(100, 60.0)
    for event in reply("m1", 3):
        journal.record("alice", event)
    for event in reply("m1", 1, end=False):
        journal.record("alice", event)
    kept = await journal.read("alice", "m1")
    assert kept is not None and [e.seq for e in kept.events] == [0, 1]


# -- on Redis -------------------------------------------------------------------------
async def test_redis_another_replica_reads_the_whole_reply(redis_journals: Made) -> None:
    writer, reader = redis_journals(), redis_journals()
    events = reply("m1", 50)
    for event in events:
        writer.record("alice", event)
    # What is not flushed yet is read by the writer itself.
    mine = await writer.read("alice", "m1")
    assert mine is not None and [e.seq for e in mine.events] == list(range(52))
    await flushed()
    theirs = await reader.read("alice", "m1")
    assert theirs is not None
    assert theirs.events == events and theirs.complete and theirs.ended
    (listed,) = await reader.replies_of("alice")
    assert (listed.chat_id, listed.message_id) == ("c1", "m1")
    assert listed.ended_ms is not None and listed.started_ms <= listed.ended_ms
    assert await reader.read("bob", "m1") is None


async def test_redis_a_running_reply_is_listed_running(redis_journals: Made) -> None:
    writer, reader = redis_journals(), redis_journals()
    for event in reply("m1", 3, end=False):
        writer.record("alice", event)
    await flushed()
    (listed,) = await reader.replies_of("alice")
    assert listed.ended_ms is None
    writer.record("alice", ReplyFailed("c1", "m1", 4, "x", "gone", "w0 w1 w2 "))
    await flushed()
    (listed,) = await reader.replies_of("alice")
    assert listed.ended_ms is not None
    kept = await reader.read("alice", "m1")
    assert kept is not None and kept.ended and kept.last_seq == 4


async def test_redis_an_end_not_written_yet_is_an_end_for_its_own_replica(
    redis_journals: Made,
) -> None:
    """The writer's own list: a reply whose start is in Redis and whose end is still on
    its way there has ended (a tab opening just then must not be sent it as running)."""
    writer = redis_journals()
    for event in reply("m1", 3, end=False):
        writer.record("alice", event)
    await flushed()
    writer.record("alice", reply("m1", 3)[-1])  # the end: pending, its flush not yet run
    (listed,) = await writer.replies_of("alice")
    assert listed.ended_ms is not None, "still pending"
    await flushed()
    (listed,) = await writer.replies_of("alice")
    assert listed.ended_ms is not None, "written"


async def test_redis_ended_replies_expire_and_leave_the_list(redis_journals: Made) -> None:
    writer, reader = redis_journals(ttl_s=0.2), redis_journals(ttl_s=0.2)
    for event in reply("m1", 3):
        writer.record("alice", event)
    await flushed()
    assert await reader.read("alice", "m1") is not None
    await asyncio.sleep(0.4)
    assert await reader.read("alice", "m1") is None
    assert await reader.replies_of("alice") == []


async def test_redis_bound_cuts_the_oldest_entries(redis_journals: Made) -> None:
    writer, reader = redis_journals(max_events=5), redis_journals(max_events=5)
    for event in reply("m1", 400, end=False):
        writer.record("alice", event)
        await asyncio.sleep(0)  # many flushes: many entries
        if event.seq % 40 == 0:
            await flushed()
    await flushed()
    kept = await reader.read("alice", "m1")
    assert kept is not None and not kept.complete
    assert kept.last_seq == 400


async def test_redis_unreachable_holds_the_events_then_the_resume_still_sees_them() -> None:
    journal = RedisJournal("redis://127.0.0.1:1/0", f"t-{uuid.uuid4().hex[:8]}:", 100, 60.0)
    try:
        for event in reply("m1", 3, end=False):
            journal.record("alice", event)
        await flushed()
        kept = await journal.read("alice", "m1")
        assert kept is not None and [e.seq for e in kept.events] == [0, 1, 2, 3]
        assert [k.message_id for k in await journal.replies_of("alice")] == ["m1"]
    finally:
        task = journal._task
        if task is not None:
            task.cancel()
        await journal._redis.aclose()
