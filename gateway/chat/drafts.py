"""The text of every stored reply in progress, checkpointed: once an interval, in
its row's draft column, so that a process that dies mid-reply leaves what it had
streamed for start-up recovery (`running.py`) or a surviving replica to keep.

One tick an interval writes the draft of every reply whose text grew since its
last one, all in one call to the store (one hop to SQLite's thread and one
transaction there; one pooled connection on PostgreSQL)::

    runner: follow(run) ──▶ {message: run} ──tick, every interval──▶ one call:
            ended(run)  ──▶ (gone, and the write on its way          draft = text
                             waited for, before its end is written)  where not done

A reply's draft is at most one interval (and a write) behind its text, as it
was when each reply wrote its own; what changed is the cost: at 250 replies,
250 writes a second, each its own task, hop and commit, became one call
(bench/RESULTS.md).  A reply's end waits for a tick's write that carries its
draft (`ended`), so the draft lands first: never on the end, nor on the next
reply's placeholder in the same message.  A draft is written only over a row
not finished yet, besides.  On PostgreSQL each draft is its own statement
(`Driver.each`), so no reply's row stays locked while the others are written.
A tick that fails is logged and the next one writes what the replies have
then; the ticks run only while a reply is followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.chat.lifecycle import ReplyRun
from gateway.store import ChatStore

log = logging.getLogger(__name__)


class Drafts:
    def __init__(self, store: ChatStore, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        # (chat id, message id) → the reply, for each stored reply streaming here.
        self._runs: dict[tuple[str, str], ReplyRun] = {}
        self._ticking: asyncio.Task[None] | None = None
        # The tick's write on its way, and whose drafts it carries.
        self._writing: asyncio.Future[None] | None = None
        self._carried: frozenset[tuple[str, str]] = frozenset()

    def follow(self, run: ReplyRun) -> None:
        """Checkpoint `run`'s text from the next tick on, until `forget`."""
        self._runs[run.running.chat_id, run.running.message_id] = run
        if self._ticking is None:
            self._ticking = asyncio.create_task(self._tick())

    def forget(self, run: ReplyRun) -> None:
        """No more drafts of `run`."""
        key = (run.running.chat_id, run.running.message_id)
        if self._runs.get(key) is run:
            del self._runs[key]

    async def ended(self, run: ReplyRun) -> None:
        """`forget`, and until a write on its way with `run`'s draft is done: its
        end is written after it (whatever the write's outcome)."""
        self.forget(run)
        writing = self._writing
        key = (run.running.chat_id, run.running.message_id)
        if writing is not None and key in self._carried:
            await asyncio.wait([writing])

    async def _tick(self) -> None:
        try:
            while self._runs:
                await asyncio.sleep(self._interval_s)
                await self._write()
        finally:
            self._ticking = None

    async def _write(self) -> None:
        drafts = []
        for (chat_id, message_id), run in self._runs.items():
            if len(run.parts) == run.drafted:
                continue  # no new text since its last draft
            run.drafted = len(run.parts)
            text = run.content
            drafts.append((chat_id, message_id, text))
            if run.trace is not None:
                run.trace.step("checkpoint", chars=len(text))
        if not drafts:
            return
        self._carried = frozenset((chat_id, message_id) for chat_id, message_id, _ in drafts)
        self._writing = writing = asyncio.ensure_future(self._store.checkpoint_drafts(drafts))
        try:
            await asyncio.shield(writing)
        except Exception as exc:
            log.warning(
                "reply drafts were not checkpointed; the next tick tries again",
                extra={"replies": len(drafts), "error": str(exc)},
            )
            for chat_id, message_id, _ in drafts:
                if (again := self._runs.get((chat_id, message_id))) is not None:
                    again.drafted = -1  # written again at the next tick
        finally:
            self._writing, self._carried = None, frozenset()

    async def close(self) -> None:
        """No more ticks (the replies have ended: shutdown)."""
        self._runs.clear()
        writing = self._writing
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
            self._ticking = None
        if writing is not None:
            await asyncio.wait([writing])  # not cut short: done before the store closes
