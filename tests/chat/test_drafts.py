"""Draft checkpoints (`gateway/chat/drafts.py`): once an interval, every stored
reply's text so far in its row's draft column, all in one transaction; only the
replies whose text grew; never over a finished row; a reply's end waits for a
write on its way with its draft; a failed tick is logged and the next one writes
again; no ticking while no reply is followed.

A real SQLite store; what its thread runs is read with SQLite's own statement
trace (`set_trace_callback`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.chat.drafts import Drafts
from gateway.chat.lifecycle import ReplyRun
from gateway.chat.running import Running
from gateway.store import ChatRecord, MessageRecord, Store, open_store
from tests.store.held import Hold, sqlite_of

INTERVAL_S = 0.05


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store("", tmp_path)
    question = MessageRecord("c1", "q1", None, "user", "Hello?")
    replies = [
        MessageRecord("c1", f"a{n}", "q1", "assistant", "", done=False, fields={"model": "m"})
        for n in range(3)
    ]
    await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question, *replies])
    yield store
    await store.close()


def reply(message_id: str) -> ReplyRun:
    return ReplyRun(Running("t-" + message_id, "c1", message_id, "alice", []))


async def drafts_of(store: Store) -> dict[str, str | None]:
    return {m.id: m.draft for m in await store.get_messages("c1") if m.role == "assistant"}


def traced(store: Store) -> list[str]:
    """Every statement SQLite's thread runs from now on."""
    statements: list[str] = []
    db = sqlite_of(store)
    db._conn.set_trace_callback(statements.append)
    return statements


async def ticks(n: int = 1) -> None:
    await asyncio.sleep(INTERVAL_S * (n + 0.5))


async def until(store: Store, drafts: dict[str, str | None]) -> None:
    """Until the stored drafts are `drafts` (a tick may run late on a busy machine)."""
    for _ in range(200):
        if await drafts_of(store) == drafts:
            return
        await asyncio.sleep(INTERVAL_S / 2)
    assert await drafts_of(store) == drafts


async def test_every_replys_text_in_one_transaction_a_tick(store: Store) -> None:
    drafts = Drafts(store, INTERVAL_S)
    runs = [reply(f"a{n}") for n in range(3)]
    for run in runs:
        run.parts.append(f"text of {run.running.message_id}")
        drafts.follow(run)
    statements = traced(store)
    await ticks()
    assert await drafts_of(store) == {f"a{n}": f"text of a{n}" for n in range(3)}
    written = [s for s in statements if s.startswith("UPDATE messages SET draft")]
    assert len(written) == 3 and statements.count("BEGIN IMMEDIATE") == 1
    await drafts.close()


async def test_only_the_replies_whose_text_grew_are_written(store: Store) -> None:
    drafts = Drafts(store, INTERVAL_S)
    quiet, talking = reply("a0"), reply("a1")
    quiet.parts.append("said once")
    talking.parts.append("one")
    drafts.follow(quiet)
    drafts.follow(talking)
    await until(store, {"a0": "said once", "a1": "one", "a2": None})
    statements = traced(store)
    talking.parts.append(" two")
    await until(store, {"a0": "said once", "a1": "one two", "a2": None})
    await ticks()  # and one more tick, with nothing new
    written = [s for s in statements if s.startswith("UPDATE messages SET draft")]
    assert len(written) == 1 and "'a1'" in written[0]
    await drafts.close()


async def test_a_forgotten_or_finished_reply_gets_no_draft(store: Store) -> None:
    drafts = Drafts(store, INTERVAL_S)
    gone, finished = reply("a0"), reply("a1")
    for run in (gone, finished):
        run.parts.append("partial")
        drafts.follow(run)
    drafts.forget(gone)  # its end writes its row
    record = await store.get_message("c1", "a1")
    assert record is not None
    record.content, record.done = "the whole answer", True
    await store.update_message(record)  # ended while still followed: a tick overtakes it
    await ticks()
    stored = await store.get_message("c1", "a1")
    assert stored is not None and stored.draft is None and stored.content == "the whole answer"
    assert await drafts_of(store) == {"a0": None, "a1": None, "a2": None}
    await drafts.close()


async def test_a_failed_tick_is_logged_and_written_at_the_next(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    db = sqlite_of(store)
    await db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF draft ON messages "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    drafts = Drafts(store, INTERVAL_S)
    run = reply("a0")
    run.parts.append("kept for later")
    drafts.follow(run)
    await ticks()
    assert "reply drafts were not checkpointed" in caplog.text
    assert (await drafts_of(store))["a0"] is None
    await db.execute("DROP TRIGGER refuse")
    # The text did not grow: written again all the same.
    await until(store, {"a0": "kept for later", "a1": None, "a2": None})
    await drafts.close()


async def test_no_ticks_while_no_reply_is_followed(store: Store) -> None:
    drafts = Drafts(store, INTERVAL_S)
    run = reply("a0")
    run.parts.append("a little")
    drafts.follow(run)
    await until(store, {"a0": "a little", "a1": None, "a2": None})
    drafts.forget(run)
    for _ in range(200):
        if drafts._ticking is None:  # stopped once nothing was left to write
            break
        await asyncio.sleep(INTERVAL_S / 2)
    assert drafts._ticking is None
    again = reply("a1")
    again.parts.append("more")
    drafts.follow(again)  # ticks again
    await until(store, {"a0": "a little", "a1": "more", "a2": None})
    await drafts.close()
    assert drafts._ticking is None


async def test_an_end_waits_for_a_write_on_its_way_with_its_draft(store: Store) -> None:
    """The tick's write is queued behind a held database thread: the reply's end
    (`ended`) waits for it, so the draft cannot land after the end, nor on the
    placeholder of the next reply into the same message.  Another reply, not in
    that write, does not wait."""
    db = sqlite_of(store)
    drafts = Drafts(store, INTERVAL_S)
    carried = reply("a0")
    carried.parts.append("on its way")
    drafts.follow(carried)
    hold = Hold(db)
    await hold.until_running()
    await ticks()  # the tick's write waits behind the hold
    assert drafts._writing is not None and not drafts._writing.done()
    later = reply("a1")  # followed after that write began: not in it
    await asyncio.wait_for(drafts.ended(later), 1)
    ending = asyncio.ensure_future(drafts.ended(carried))
    await asyncio.sleep(INTERVAL_S)
    assert not ending.done()
    await hold.release()
    await asyncio.wait_for(ending, 5)
    assert (await drafts_of(store))["a0"] == "on its way"
    await drafts.close()
