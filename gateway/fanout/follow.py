"""Following one reply from a point the client names: what the replay buffer
kept after it, then the live rest, each event once, in `seq` order.

Theory of operation, for one follower::

    subscribe(user:<owner>)  live events queue here (the room every stored reply
          │                  of the user is published to, on every replica), no merging
    journal.read ─▶ Replay   (read again after `journal.lag_s` when another
          │                  replica may not have flushed yet: then every event
          │                  published before the subscription is in it)
          ├ resume (after = the last seq the client has; -1: nothing yet)
          │     the buffer holds seq after+1 on (or the reply from its start):
          │         prefix = events ≤ after   (for an encoder that keeps state per
          │                                    reply: Nadoo's index, RAGFlow's text)
          │         then events > after
          │     it does not (expired, cut by its bound): a ReplySnapshot of the
          │         stored reply (exact=False), then live
          ├ catch up (a new tab, a fresh event stream): a running reply as one
          │     ReplySnapshot(exact=True) of its text so far, then live
          └ live: an event of the reply
                seq ≤ last sent          dropped (already sent)
                seq = last + 1           sent
                seq > last + 1           a gap (another replica's buffer had not
                                         flushed yet): the buffer is read again, up
                                         to GAP_READS times GAP_WAIT_S apart, and the
                                         missing events sent; still missing: a stored
                                         ReplySnapshot, then on
          an end event (ReplyFinished, ReplyFailed) is always sent, once, and ends it
          nothing of the reply for SILENT_REREAD_S (then twice as long, up to
                SILENT_REREAD_MAX_S), where a flush can lag: the buffer is read
                again from the last seq sent (a tail published before the
                follower subscribed may reach it later than `lag_s`, with no
                later event to show the gap)
          the live queue overflows (the follower's consumer is slower than the
                model): a fresh subscription, and the buffer read again from the
                last seq sent, as after a gap — a follower never gives up on a
                reply the buffer still holds

`into` puts a follower's events into a connection's outbox, each only when it
has room (`Outbox.room_for`): what paces a connection that fell behind a reply
(`Outbox.on_behind`) to the speed its client reads.

A reply is found by (user, message id): another user's reply is never found.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from gateway import rooms
from gateway.bus import Replay
from gateway.events import (
    AnyReplyEvent,
    Event,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    TextDelta,
)
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox, Overflow

GAP_READS = 5
GAP_WAIT_S = 0.03
# A follower that has had nothing of its reply for this long reads the buffer
# again, then after twice as long, up to SILENT_REREAD_MAX_S: the reply's tail,
# its end among it, may have been published before the follower (re)subscribed
# and reached the buffer later than `journal.lag_s` (another replica's loop
# behind), and nothing later would reveal it as a gap.  Only where a flush can
# lag (`journal.lag_s`): never for the buffer in this process.
SILENT_REREAD_S = 1.0
SILENT_REREAD_MAX_S = 30.0

# The stored state of a reply, as a snapshot (None: no such message of this chat).
Stored = Callable[[str, str], Awaitable[ReplySnapshot | None]]


@dataclass(slots=True)
class Plan:
    """What to send first, decided from the buffer alone (pure)."""

    prefix: list[AnyReplyEvent] = field(default_factory=list)
    replay: list[Event] = field(default_factory=list)
    # The buffer cannot serve this resume: send the stored snapshot.
    needs_snapshot: bool = False
    last: int = -1
    ended: bool = False


def plan(kept: Replay | None, after: int, catch_up: bool = False) -> Plan:
    """From the kept events: resume after `after`, or (catch_up) a snapshot of the text
    so far."""
    if kept is None or not kept.events:
        return Plan(needs_snapshot=True, last=after)
    first = kept.events[0].seq
    if catch_up:
        if not kept.complete:
            return Plan(needs_snapshot=True, last=kept.last_seq)
        text = "".join(e.text for e in kept.events if type(e) is TextDelta)
        last = kept.last_seq
        message_id = kept.events[0].message_id
        if kept.ended:
            # Ended meanwhile: the text, then the end (never the deltas again).
            end = kept.events[-1]
            snapshot = ReplySnapshot(kept.chat_id, message_id, end.seq - 1, text, False, True)
            return Plan(replay=[snapshot, end], last=last, ended=True)
        snapshot = ReplySnapshot(kept.chat_id, message_id, last, text, False, True)
        return Plan(replay=[snapshot], last=last)
    if first > after + 1:
        return Plan(needs_snapshot=True, last=kept.last_seq, ended=kept.ended)
    prefix = [e for e in kept.events if e.seq <= after]
    replay: list[Event] = [e for e in kept.events if e.seq > after]
    last = max(after, kept.last_seq)
    return Plan(prefix=prefix, replay=replay, last=last, ended=kept.ended)


@dataclass(slots=True)
class Following:
    """A reply being followed: `prefix` primes a stateful encoder (its frames are not
    sent); `events` is what follows, ending with the reply's end."""

    chat_id: str
    message_id: str
    prefix: list[AnyReplyEvent]
    events: AsyncGenerator[Event, None]
    # The reply ended and the client has everything: nothing will come.
    finished: bool = False
    # Ends the live subscription, even if `events` was never iterated (closing a
    # generator that never started does not run its `finally`).
    close: Callable[[], None] = lambda: None


async def follow(
    hub: Hub,
    user_id: str,
    message_id: str,
    after: int,
    stored: Stored,
    chat_id: str | None = None,
    *,
    catch_up: bool = False,
) -> Following | None:
    """The reply `message_id` of `user_id` from after `after`; None when neither the
    buffer nor the store (given `chat_id`) knows it."""
    live = _Live(hub, user_id)
    outbox = live.outbox
    try:
        await hub.watching(outbox.rooms)
        kept = await hub.journal.read(user_id, message_id)
        if hub.journal.lag_s and (kept is None or not kept.ended):
            # What another replica published before we listened may not be in
            # the buffer yet: once it is, everything before the subscription is.
            await asyncio.sleep(hub.journal.lag_s)
            kept = await hub.journal.read(user_id, message_id)
        if kept is not None:
            if chat_id is not None and kept.chat_id != chat_id:
                hub.unsubscribe(outbox)
                return None
            chat_id = kept.chat_id
        if chat_id is None:
            hub.unsubscribe(outbox)
            return None
        first = plan(kept, after, catch_up)
        if first.needs_snapshot:
            snapshot = await stored(chat_id, message_id)
            if snapshot is None:
                hub.unsubscribe(outbox)
                return None
            if snapshot.done or snapshot.content or after >= 0:
                first.replay = [replace(snapshot, seq=first.last)]
            # else: a reply not begun yet, asked from its start: its events will come.
            first.ended = first.ended or snapshot.done
    except BaseException:
        hub.unsubscribe(outbox)
        raise
    events = _events(live, user_id, chat_id, message_id, first, stored)
    finished = first.ended and not first.replay
    return Following(chat_id, message_id, first.prefix, events, finished, live.close)


class _Live:
    """A follower's subscription to the user's room (no merging: it counts seqs),
    renewed when it overflows."""

    def __init__(self, hub: Hub, user_id: str) -> None:
        self.hub = hub
        self._rooms = [rooms.user(user_id)]
        self.outbox: Outbox = hub.subscribe(self._rooms, merge=False)

    async def renew(self) -> None:
        self.hub.unsubscribe(self.outbox)
        self.outbox = self.hub.subscribe(self._rooms, merge=False)
        await self.hub.watching(self._rooms)

    def close(self) -> None:
        self.hub.unsubscribe(self.outbox)


async def _events(
    live: _Live,
    user_id: str,
    chat_id: str,
    message_id: str,
    first: Plan,
    stored: Stored,
) -> AsyncGenerator[Event, None]:
    hub = live.hub
    last = first.last
    loop = asyncio.get_running_loop()
    quiet = SILENT_REREAD_S
    reread_at = loop.time() + quiet if hub.journal.lag_s else None
    try:
        for event in first.replay:
            yield event
            if isinstance(event, ReplyFinished | ReplyFailed):
                return
        if first.ended:
            return
        while True:
            try:
                if reread_at is None or len(live.outbox):
                    got = await live.outbox.get()
                else:
                    async with asyncio.timeout_at(reread_at):
                        got = await live.outbox.get()
            except TimeoutError:
                quiet = min(quiet * 2, SILENT_REREAD_MAX_S)
                reread_at = loop.time() + quiet
                async for missing in _late(hub, user_id, chat_id, message_id, last, stored):
                    yield missing
                    if isinstance(missing, ReplyFinished | ReplyFailed):
                        return
                    last = max(last, missing.seq) if isinstance(missing, ReplyEvent) else last
                    quiet, reread_at = SILENT_REREAD_S, loop.time() + SILENT_REREAD_S
                continue
            except Overflow:
                # Slower than the model: listen afresh, and take what was missed
                # from the buffer (everything before the new subscription is in it
                # once another replica's flush is in).
                await live.renew()
                if hub.journal.lag_s:
                    await asyncio.sleep(hub.journal.lag_s)
                async for missing in _after(hub, user_id, chat_id, message_id, last, stored):
                    yield missing
                    if isinstance(missing, ReplyFinished | ReplyFailed):
                        return
                    last = max(last, missing.seq) if isinstance(missing, ReplyEvent) else last
                continue
            if got is None:
                return
            event = got
            if not isinstance(event, ReplyEvent) or event.message_id != message_id:
                continue
            end = isinstance(event, ReplyFinished | ReplyFailed)
            if event.seq <= last and not end:
                continue
            if event.seq > last + 1:
                async for missing in _fill(hub, user_id, chat_id, message_id, last, event, stored):
                    yield missing
                    if isinstance(missing, ReplyFinished | ReplyFailed):
                        return
            yield event
            last = max(last, event.seq)
            if end:
                return
            if reread_at is not None:
                quiet, reread_at = SILENT_REREAD_S, loop.time() + SILENT_REREAD_S
    finally:
        live.close()


async def _late(
    hub: Hub, user_id: str, chat_id: str, message_id: str, last: int, stored: Stored
) -> AsyncGenerator[Event, None]:
    """After a silence: what the buffer holds after `last`, as `_after` (the stored
    snapshot if it went on without `last + 1`); nothing when it holds nothing
    newer (a silent reply is not a lost one: no snapshot, read after read)."""
    kept = await hub.journal.read(user_id, message_id)
    if kept is None or not kept.events or kept.events[-1].seq <= last:
        return
    if kept.events[0].seq <= last + 1:
        for event in _kept_after(kept, last):
            yield event
        return
    async for missing in _after(hub, user_id, chat_id, message_id, last, stored):
        yield missing


def _kept_after(kept: Replay, last: int) -> list[AnyReplyEvent]:
    """The buffer's events after `last`."""
    return [event for event in kept.events if event.seq > last]


async def _after(
    hub: Hub, user_id: str, chat_id: str, message_id: str, last: int, stored: Stored
) -> AsyncGenerator[Event, None]:
    """What the buffer holds after `last`; the stored snapshot when it no longer
    holds `last + 1`."""
    kept = await hub.journal.read(user_id, message_id)
    if kept is not None and kept.events and kept.events[0].seq <= last + 1:
        for e in _kept_after(kept, last):
            yield e
        return
    snapshot = await stored(chat_id, message_id)
    if snapshot is not None:
        seq = kept.last_seq if kept is not None and kept.events else last
        yield replace(snapshot, seq=max(seq, last))
        if kept is not None and kept.ended and kept.events:
            yield kept.events[-1]


async def _fill(
    hub: Hub,
    user_id: str,
    chat_id: str,
    message_id: str,
    last: int,
    arrived: ReplyEvent,
    stored: Stored,
) -> AsyncGenerator[Event, None]:
    """The events between `last` and `arrived`, from the buffer once it has them."""
    for attempt in range(GAP_READS):
        kept = await hub.journal.read(user_id, message_id)
        if kept is not None:
            seqs = {e.seq for e in kept.events}
            if all(seq in seqs for seq in range(last + 1, arrived.seq)):
                for e in kept.events:
                    if last < e.seq < arrived.seq:
                        yield e
                return
        if attempt + 1 < GAP_READS:
            await asyncio.sleep(GAP_WAIT_S)
    snapshot = await stored(chat_id, message_id)
    if snapshot is not None and not isinstance(arrived, ReplyFinished | ReplyFailed):
        yield snapshot


async def into(outbox: Outbox, following: Following) -> None:
    """A followed reply's events into a connection's own outbox, in order, each once,
    each when it has room: meanwhile the copies its rooms bring are dropped
    (`Outbox.divert`)."""
    outbox.divert(following.message_id)  # again: idempotent (the caller did at once)
    try:
        async with contextlib.aclosing(following.events):
            async for event in following.events:
                if not outbox.fits(event):
                    await outbox.room_for(event)
                if outbox.closed or outbox.overflowed:
                    return
                outbox.put(event, resumed=True)
    finally:
        outbox.undivert(following.message_id)
