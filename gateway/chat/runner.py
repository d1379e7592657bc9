"""Running one reply: its upstream's events to its rooms, its text to the store,
and its one end — `_conclude` is the only place a reply ends, whatever ended it.

A stored reply goes through three states, each one row write at most::

    placeholder  {content: "", done: false}            written before streaming
    streaming    draft column checkpointed ~once a second (`drafts.py`; content
                 untouched, so a poller never mistakes half a reply for a whole one)
    finished     {content: <all>, done: true, usage, ...}  one write at the end
                 (or the partial text with an `error` note, or `cancelled`)

A turn's rows (the question, the placeholders) are written while its
replies' model servers are asked: the write is most of a turn's own time before
its first token (bench/RESULTS.md).  Nothing of a reply is published or stored
before that write is done; if it fails, the reply ends there, unpublished and
unstored, and its upstream request is closed (`TurnNotWritten`): the turn's
caller answers the failure in its client's protocol.

The end event is published only after its row is written, so a client that
reloads on it sees the final text.  Every event goes into the replay buffer as
it is published (`Hub.reply_event`), so a client can resume the reply.  A
reply runs in its own task: a client
that disconnects does not stop it (it lands in the chat; a backend-controlled
caller that leaves before its model server answered does: `starter.into`); a
stop request cancels the task, and the reply ends CANCELLED with what streamed
so far.
The phases are `lifecycle.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from gateway import rooms
from gateway.chat.accounting import ENDINGS, counted_end, never_ran, traced
from gateway.chat.chats import DEFAULT_TITLES, now_s
from gateway.chat.drafts import Drafts
from gateway.chat.lifecycle import Phase, ReplyRun
from gateway.chat.running import Running, RunningReplies
from gateway.chat.slots import ReplySlots
from gateway.edge import metrics
from gateway.edge.trace import Traces
from gateway.errors import DatabaseDown, GatewayError
from gateway.events import Event, Notification, ReplyFailed, ReplyFinished, TextDelta, Usage
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence
from gateway.store import ChatStore
from gateway.store.records import MessageRecord

log = logging.getLogger(__name__)

NOTIFICATION_PREVIEW_CHARS = 140
# A reply's end written while the database is briefly away: tried again, the first
# wait this long, doubling up to END_WRITE_WAIT_MAX_S, for at most END_WRITE_RETRY_S
# (LIMITS.md); its end goes out once it is written (or given up on).
END_WRITE_WAIT_S = 0.2
END_WRITE_WAIT_MAX_S = 5.0
END_WRITE_RETRY_S = 60.0

Opening = Callable[[], Awaitable[AsyncGenerator[Event, None]]]


class TurnNotWritten(Exception):
    """The write of a reply's turn failed: the reply ends before anything of it."""


class ReplyRunner:
    def __init__(
        self,
        store: ChatStore,
        hub: Hub,
        registry: RunningReplies,
        presence: Presence,
        checkpoint_interval_s: float,
        traces: Traces | None = None,
        slots: ReplySlots | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._registry = registry
        self._presence = presence
        # Every stored reply's text so far, in its row once an interval (`drafts.py`).
        self.drafts = Drafts(store, checkpoint_interval_s)
        self.traces = traces if traces is not None else Traces()
        # Taken by the starter (`starter.py`) before the reply runs, given back at its
        # end here.
        self.slots = slots if slots is not None else ReplySlots(None)
        # The ends being stored of replies that never started (`unopened`).
        self._ending: set[asyncio.Future[None]] = set()

    def start(
        self,
        running: Running,
        opening: Opening,
        record: MessageRecord | None = None,
        title: str | None = None,
        after: Callable[[ReplyFinished], None] | None = None,
        written: asyncio.Future[None] | None = None,
    ) -> None:
        """Run the reply in its own task, registered (stop from anywhere) until it ends;
        `after` is called with its end when it finished (not failed or stopped);
        `written` is the write of its turn, when that is not done yet."""
        run = ReplyRun(running, record, title, after, written=written)
        self._registry.start(running, self._run(run, opening))

    async def unopened(
        self,
        record: MessageRecord,
        user_id: str,
        error: BaseException,
        written: asyncio.Future[None],
    ) -> None:
        """A stored placeholder whose reply never started: its caller left while it
        was being written (backend-controlled mode, `starter.into`).  Once `written`
        is done, ended as a reply stopped with no text, and counted.  Nothing is
        ended or counted when the write failed (nothing of it to end: a row it did
        not make stays as it was, for start-up recovery).  Shielded, so a caller
        that is gone still leaves no unfinished row (`ends_stored` waits for it); an
        end that cannot be stored is logged, never raised over `error`."""
        chat_id, message_id = record.chat_id, record.id
        if not isinstance(error, asyncio.CancelledError):
            # The write failed (nothing to end), or the process is going down
            # (start-up recovery ends the row).
            written.add_done_callback(_retrieved)
            self._registry.release(chat_id, [message_id], user_id)
            return
        usage = Usage(0, 0, estimated=True)
        end = ReplyFinished(chat_id, message_id, 0, "", usage, "cancelled", 0.0, cancelled=True)
        ending = asyncio.ensure_future(self._end_unopened(record, user_id, end, written))
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)
        # Its message held (`RunningReplies.claim`) until its end is stored.
        ending.add_done_callback(lambda _: self._registry.release(chat_id, [message_id], user_id))
        await asyncio.shield(ending)

    async def ends_stored(self) -> None:
        """Until the ends of the replies that never started are stored."""
        while self._ending:
            await asyncio.wait(set(self._ending))

    async def _end_unopened(
        self,
        record: MessageRecord,
        user_id: str,
        end: ReplyFinished,
        written: asyncio.Future[None],
    ) -> None:
        try:
            await written
        except BaseException:
            return  # never written: nothing to end, no reply to count
        never_ran(Phase.CANCELLED, user_id, record.chat_id, record.id, None)
        # Tried again while the database is unavailable, as any reply's end (and a
        # failure logged there).
        await self._stored_end(record, end, None)

    async def _run(self, run: ReplyRun, opening: Opening) -> None:
        metrics.REPLIES_RUNNING.inc()
        running = run.running
        run.trace = trace = self.traces.begin(running.message_id, running.user_id)
        trace.add(
            "execution_info",
            execution_id=running.message_id,
            chat_id=running.chat_id,
            tool_name="chat",
            status="running",
            stored=run.record is not None,
        )
        try:
            try:
                end = await self._stream(run, opening)
            except TurnNotWritten:
                trace.log("error", "the turn could not be stored: the reply did not start")
                trace.end()
                return
            except asyncio.CancelledError:
                await _whole(self._stopped(run))
                if not run.running.cancelled_by_user:
                    raise
                return
            except Exception:
                log.exception("reply failed", extra={"message_id": run.running.message_id})
                trace.log("error", "the reply failed inside the gateway (see its log)")
                try:
                    # As a stop: nothing of the reply goes out, or is stored, before
                    # its turn is written (a failure before its first event can come
                    # first).
                    if not await _was_written(run):
                        trace.end()
                        return
                except asyncio.CancelledError:
                    await _whole(self._stopped(run))  # stopped while it waited: ended as such
                    if not run.running.cancelled_by_user:
                        raise
                    return
                end = run.crashed()
            # Whole: a stop that lands while the end is being stored must not leave
            # the row half-written, the clients without their end, or the message
            # free before its end is stored.
            try:
                await _whole(self._conclude(run, end))
            except asyncio.CancelledError:
                if not run.running.cancelled_by_user:
                    raise
        finally:
            self.drafts.forget(run)
            metrics.REPLIES_RUNNING.dec()
            self.slots.release(run.running.user_id)
            self._registry.ended(run.running)

    async def _stopped(self, run: ReplyRun) -> None:
        """A stop request (or shutdown): what was streamed kept, the reply ended
        cleanly, once its turn is written (there is nothing to end before)."""
        if await _was_written(run):
            await self._conclude(run, run.cancelled())

    async def _stream(self, run: ReplyRun, opening: Opening) -> ReplyFinished | ReplyFailed:
        """The upstream's events to the rooms, until the one that ends the reply."""
        trace = run.trace
        if trace is not None:
            trace.step("upstream_request")
        try:
            events = await opening()
        except GatewayError as exc:
            await _written(run)
            return run.refused(exc)
        publish, user_id, rooms = self._hub.reply_event, run.running.user_id, run.running.rooms
        crowded, room = self._hub.bus.crowded, self._hub.bus.room
        starting = True
        async with contextlib.aclosing(events):
            async for event in events:
                if starting:
                    # At the first event (ReplyStarted, at once), not before: closing
                    # a started generator closes the model server's request.
                    if run.written is not None:
                        await _written(run)
                    if run.record is not None:
                        self.drafts.follow(run)  # its row is written: checkpointed
                    starting = False
                if run.first_token is None:
                    run.saw(event)
                    if run.first_token is not None and trace is not None:
                        trace.step("first_token", model=run.model)
                else:
                    run.saw(event)
                if type(event) is not TextDelta and isinstance(event, ENDINGS):
                    return event
                publish(user_id, rooms, event)
                if crowded():  # the other replicas' share waits to go out: so does the rest
                    await room()
        return run.crashed("The model server's reply ended without finishing")

    async def _conclude(self, run: ReplyRun, end: ReplyFinished | ReplyFailed) -> None:
        """The one place a reply ends: its row written (a store that fails here is
        logged, and the clients still get the end), then the end published, then —
        for a finished stored reply nobody watched — a notification."""
        run.advance(run.end_phase(end))
        counted_end(run, end)
        traced(run, end)
        if run.record is not None:
            await self.drafts.ended(run)  # a draft on its way lands first
            titled = await self._stored_end(run.record, end, run.title)
            if titled is not None and isinstance(end, ReplyFinished):
                end = replace(end, title=titled)
        # Its message free before its end goes out: a client may answer into it
        # again as soon as it has the end.
        self._registry.ended(run.running)
        self._hub.reply_event(run.running.user_id, run.running.rooms, end)
        if run.phase is Phase.FINISHED:
            assert isinstance(end, ReplyFinished)
            if run.record is not None:
                self._notify_if_unwatched(run.running, end.content)
            if run.after is not None:
                run.after(end)

    async def _stored_end(
        self, record: MessageRecord, end: ReplyFinished | ReplyFailed, title: str | None
    ) -> str | None:
        """`_store_end`, tried again while the database is unavailable (a restart, a
        failover): the reply is held meanwhile (its message claimed, its end not yet
        sent), so no replica takes it for one a crash left unfinished and no client
        sees an end the store does not have.  Given up after END_WRITE_RETRY_S, or
        at once when the replica shuts down (`RunningReplies.stopping`)."""
        extra = {"message_id": end.message_id, "chat_id": end.chat_id}
        deadline = time.monotonic() + END_WRITE_RETRY_S
        wait, tries = END_WRITE_WAIT_S, 0
        while True:
            tries += 1
            try:
                titled = await self._store_end(record, end, title)
            except DatabaseDown:
                # Given up past the bound, or once the replica is shutting down (past
                # its grace: the orchestrator's kill is near, and the store may be
                # closing): the end goes out, the row keeps its last checkpoint.
                if self._registry.stopping or time.monotonic() + wait > deadline:
                    log.error(
                        "storing a reply's end failed: the database stayed unavailable",
                        extra={**extra, "tries": tries},
                    )
                    return None
                if tries == 1:
                    log.warning(
                        "storing a reply's end: the database is unavailable; trying again",
                        extra=extra,
                    )
                await asyncio.sleep(wait)
                wait = min(wait * 2, END_WRITE_WAIT_MAX_S)
                continue
            except Exception:
                log.exception("storing a reply's end failed", extra=extra)
                return None
            if tries > 1:
                log.info("a reply's end stored once the database was back", extra=extra)
            return titled

    async def _store_end(
        self, record: MessageRecord, end: ReplyFinished | ReplyFailed, title: str | None = None
    ) -> str | None:
        """The reply's final row, in one transaction; the chat's new title when this
        reply gave the chat its first one (a failed reply gives none)."""
        fields = dict(record.fields)
        if isinstance(end, ReplyFinished):
            record.content = end.content
            if end.output is not None:
                # Its reasoning, as Open WebUI 0.12.4 stores it (`chat/reasoning.py`).
                fields["output"] = end.output
            if not end.cancelled:
                fields["usage"] = end.usage.as_dict()
            else:
                fields["cancelled"] = True
        else:
            record.content = end.partial_content
            fields["error"] = {"content": end.message}
            title = None
        record.done, record.fields, record.draft = True, fields, None
        titled = await self._store.finish_reply(record, now_s(), title, DEFAULT_TITLES)
        return title if titled else None

    def _notify_if_unwatched(self, running: Running, content: str) -> None:
        """A reply that finished while none of the user's chat sockets was open
        becomes a notification (Nadoo's `/ws/notifications/{user_id}`)."""
        if self._presence.watching(running.user_id):
            return
        preview = " ".join(content.split())
        if len(preview) > NOTIFICATION_PREVIEW_CHARS:
            preview = preview[: NOTIFICATION_PREVIEW_CHARS - 1] + "…"
        note = Notification(running.user_id, "Reply ready", preview, f"/c/{running.chat_id}")
        self._hub.publish([rooms.notify(running.user_id)], note)


async def _whole(work: Coroutine[Any, Any, None]) -> None:
    """`work` run to its end even if the reply's task is cancelled meanwhile (a
    stop, a second stop, a shutdown): a reply ends once and wholly.  Its message
    is let go once its end's write is done (`_conclude`, before the end is
    sent); its slot is given back, and whoever stopped it is answered, once the
    end is sent.  A cancel that came meanwhile is raised once `work` is done."""
    done = asyncio.ensure_future(work)
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            if done.cancelled():
                raise
            cancelled = True
    done.result()
    if cancelled:
        raise asyncio.CancelledError


async def _written(run: ReplyRun) -> None:
    """Until the reply's turn is written; `TurnNotWritten` if that failed."""
    if not await _was_written(run):
        raise TurnNotWritten


async def _was_written(run: ReplyRun) -> bool:
    if run.written is None:
        return True
    try:
        # Shielded: the write is the turn's, shared by its replies (and its caller).
        await asyncio.shield(run.written)
    except asyncio.CancelledError:
        if run.written.cancelled():
            return False
        raise
    except Exception:
        return False  # the turn's caller logs and answers it
    return True


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: not reported as never retrieved
