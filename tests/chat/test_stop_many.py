"""A stop of several replies of one replica (a multi-model turn, a user's "delete all",
a removed user's replies): each cancelled at once, the stop answered once their ends
are stored and sent, or after `STOP_WAIT_S`.

    was: cancelled one after the other, each waited for up to STOP_WAIT_S: with
         their ends' writes waiting for a database that is away, N replies took
         N × 5 s to stop, and the later ones streamed on meanwhile
    now: all cancelled first, then one wait for them all

The replies here are tasks that, once cancelled, take their time to end, as a
reply does whose end's write waits for the database (`ReplyRunner._stored_end`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.chat import running as running_module
from gateway.chat.running import Running, RunningReplies, StopTarget
from gateway.fanout.hub import Hub
from gateway.store import open_store

WAIT_S = 0.5


async def test_a_stop_of_several_replies_cancels_all_at_once_and_waits_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running_module, "STOP_WAIT_S", WAIT_S)
    store = await open_store("", tmp_path)
    replies = RunningReplies(store, Hub(8))
    loop = asyncio.get_running_loop()
    cancelled_at: dict[str, float] = {}
    ended: list[str] = []
    try:
        runs = [Running(f"t{i}", "c1", f"m{i}", "u1", ["user:u1"]) for i in range(3)]

        async def reply(run: Running) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled_at[run.message_id] = loop.time() - asked
                await asyncio.sleep(WAIT_S * 3)  # its end's write, the database away
                ended.append(run.message_id)
                replies.ended(run)

        for run in runs:
            replies.start(run, reply(run))
        await asyncio.sleep(0)
        asked = loop.time()
        stopped = await replies.stop(StopTarget("u1", chat_id="c1"))
        answered_s = loop.time() - asked
        assert stopped == 3
        assert WAIT_S <= answered_s < WAIT_S * 2, answered_s
        assert sorted(cancelled_at) == ["m0", "m1", "m2"]
        assert max(cancelled_at.values()) < 0.1, cancelled_at  # all at once
        assert ended == []  # their ends are on their way, not lost
        await asyncio.wait([run.task for run in runs if run.task is not None])
        assert sorted(ended) == ["m0", "m1", "m2"] and replies.running == {}
    finally:
        await store.close()


async def test_a_reply_task_that_fails_past_its_own_handling_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A stop no longer waits for every task to its end, so no one may read its
    # failure: the task says it itself.
    store = await open_store("", tmp_path)
    replies = RunningReplies(store, Hub(8))
    try:
        run = Running("t1", "c1", "m1", "u1", ["user:u1"])

        async def reply() -> None:
            raise RuntimeError("broken past the runner's own handling")

        with caplog.at_level(logging.ERROR, logger="gateway.chat.running"):
            replies.start(run, reply())
            assert run.task is not None
            await asyncio.wait([run.task])
            await asyncio.sleep(0)  # its done callbacks
        assert "a reply's task failed" in caplog.text
        assert "broken past the runner's own handling" in caplog.text
    finally:
        await store.close()
