"""The replay buffer on Redis, so a client that reconnects to another replica
resumes there: a stream per reply, and a hash per user listing the user's kept
replies.

Theory of operation::

    record(user, e) ──▶ pending[(user, message)] ─(every FLUSH_S, or at once when
                                                   a reply ends)─▶ one pipeline:
        XADD  <prefix>journal:r:<user>:<message>  <last seq>-1  MINID <last seq - max_events>
              e=[events…]   (the entry's id is its last event's seq, so trimming
              by id keeps about `max_events` events; a reply's first event
              deletes what an earlier reply under the same id left)
        PEXPIRE that stream: RUNNING_TTL_S while the reply runs, ttl_s once it ended
        HSET  <prefix>journal:u:<user>  <message> {"c": chat, "s": started ms} at the
              start, e:<message> <ended ms> at the end (expired fields are dropped
              when the list is read); the hash lives RUNNING_TTL_S past its last write

    read(user, message) ── XRANGE the stream, plus what this replica has not
                           flushed yet ─▶ Replay (events in seq order)

An entry is a batch of events (one XADD per reply per flush, not per event:
what keeps the buffer's cost low at thousands of events a second).  A reader
on another replica can be up to FLUSH_S behind the reply's live events; the
follower (`fanout/follow.py`) reads again when it sees a gap.  Redis down:
the pending batches wait (at most `max_events` per reply, the oldest dropped),
the log says so every 10 s, and a resume meanwhile gets the stored snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import replace
from urllib.parse import quote

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gateway import jsonwire
from gateway.bus import KeptReply, Replay, started_ms
from gateway.bus.link import Complaints, client
from gateway.bus.wire import Malformed, event_dict, event_of
from gateway.events import AnyReplyEvent, Event, ReplyEvent, ReplyFailed, ReplyFinished

log = logging.getLogger(__name__)

FLUSH_S = 0.02
# A running reply's stream outlives any pause of its model server.
RUNNING_TTL_S = 3600.0
RETRY_S = 1.0
# The user's hash: "<message id>" → {"c": chat id, "s": started ms}; "e:<message id>" → ended ms.
ENDED = "e:"


class _Pending:
    __slots__ = ("chat_id", "ended_ms", "events", "started_ms")

    def __init__(self, chat_id: str, max_events: int, started_ms: int | None) -> None:
        self.chat_id = chat_id
        self.events: deque[AnyReplyEvent] = deque(maxlen=max_events)
        self.started_ms = started_ms
        self.ended_ms: int | None = None


class RedisJournal:
    # A read sees what other replicas recorded up to about this long ago.
    lag_s = FLUSH_S * 2.5

    def __init__(self, url: str, prefix: str, max_events: int, ttl_s: float) -> None:
        self._redis = client(url)
        self._prefix = prefix
        self._max_events = max_events
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._in_flight: dict[tuple[str, str], _Pending] = {}
        # Running replies' streams: when their expiry is next refreshed (monotonic).
        self._expiring: dict[tuple[str, str], float] = {}
        self._wakeup = asyncio.Event()
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._failing = Complaints("replay buffer: Redis unreachable; resumes get snapshots")
        self._refused = Complaints("replay buffer: Redis refused a batch; it is dropped")

    def _stream(self, user_id: str, message_id: str) -> str:
        return f"{self._prefix}journal:r:{quote(user_id, safe='')}:{quote(message_id, safe='')}"

    def _index(self, user_id: str) -> str:
        return f"{self._prefix}journal:u:{quote(user_id, safe='')}"

    # -- writing ----------------------------------------------------------------------
    def record(self, user_id: str, event: Event) -> None:
        if not self._max_events or not isinstance(event, ReplyEvent) or event.chat_id is None:
            return
        key = (user_id, event.message_id)
        pending = self._pending.get(key)
        if pending is None:
            started = started_ms(event) if event.seq == 0 else None
            pending = self._pending[key] = _Pending(event.chat_id, self._max_events, started)
        pending.events.append(event)
        if isinstance(event, ReplyFinished | ReplyFailed):
            pending.ended_ms = int(time.time() * 1000)
            self._urgent = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher())
        self._wakeup.set()

    async def _flusher(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._urgent:
                await asyncio.sleep(FLUSH_S)
            self._wakeup.clear()
            self._urgent = False
            if not await self._flush():
                await asyncio.sleep(RETRY_S)
                self._wakeup.set()

    async def _flush(self) -> bool:
        """Every pending batch in one round trip; False (kept for later) if Redis failed."""
        taken, self._pending = self._pending, {}
        if not taken:
            return True
        # Readable meanwhile: a read must not miss what is on its way to Redis.
        self._in_flight = taken
        pipe = self._redis.pipeline(transaction=False)
        for (user_id, message_id), pending in taken.items():
            if pending.events:
                self._queue(pipe, user_id, message_id, pending)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError):
            self._failing.note()
            self._put_back(taken)
            return False
        finally:
            self._in_flight = {}
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            # A batch Redis refuses (an entry it already has, after a retry) is not
            # retried: it would be refused for ever and hold up every other.
            self._refused.note(error=str(refused[0])[:200])
        return True

    def _queue(self, pipe: Pipeline, user_id: str, message_id: str, pending: _Pending) -> None:
        """One reply's pending events, and its expiries and index entries, into `pipe`."""
        stream = self._stream(user_id, message_id)
        if pending.events[0].seq == 0:
            pipe.delete(stream)  # a reply run again under its id starts afresh
            self._expiring.pop((user_id, message_id), None)
        batch = jsonwire.dumps([event_dict(event) for event in pending.events])
        # The entry's id is its last event's seq: trimming by id bounds the events.
        # Not at the end (a survivor numbers a dead replica's end far ahead).
        last = pending.events[-1].seq
        if pending.ended_ms is None:
            oldest = f"{max(0, last - self._max_events + 1)}-0"
            pipe.xadd(stream, {"e": batch}, id=f"{last}-1", minid=oldest, approximate=False)
        else:
            pipe.xadd(stream, {"e": batch}, id=f"{last}-1")
        ended = pending.ended_ms is not None
        # Expiries only when they change (XADD keeps a key's TTL): at the start,
        # at the end, and about every half RUNNING_TTL_S of a long reply.
        now = time.monotonic()
        key = (user_id, message_id)
        if ended:
            pipe.pexpire(stream, self._ttl_ms)
            self._expiring.pop(key, None)
        elif now >= self._expiring.get(key, 0.0):
            pipe.pexpire(stream, int(RUNNING_TTL_S * 1000))
            self._expiring[key] = now + RUNNING_TTL_S / 2
        index = self._index(user_id)
        if pending.started_ms is not None:
            start = {"c": pending.chat_id, "s": pending.started_ms}
            pipe.hset(index, message_id, jsonwire.dumps(start))
        if ended:
            pipe.hset(index, ENDED + message_id, str(pending.ended_ms))
        if pending.started_ms is not None or ended:
            pipe.pexpire(index, int(RUNNING_TTL_S * 1000))

    def _put_back(self, taken: dict[tuple[str, str], _Pending]) -> None:
        for key, pending in taken.items():
            newer = self._pending.get(key)
            if newer is not None:
                pending.events.extend(newer.events)
                pending.ended_ms = newer.ended_ms or pending.ended_ms
            self._pending[key] = pending

    # -- reading ----------------------------------------------------------------------
    async def read(self, user_id: str, message_id: str) -> Replay | None:
        # What is on its way to Redis, taken before reading it (a flush that ends
        # meanwhile has put it there); what is recorded later arrives live.
        chat_id: str | None = None
        events: dict[int, AnyReplyEvent] = {}
        unsent: list[AnyReplyEvent] = []
        for batches in (self._in_flight, self._pending):
            pending = batches.get((user_id, message_id))
            if pending is not None:
                chat_id = pending.chat_id
                unsent += pending.events
        try:
            entries = await self._redis.xrange(self._stream(user_id, message_id)) or []
        except (RedisError, OSError):
            self._failing.note()
            entries = []
        for _id, fields in entries:
            with contextlib.suppress(Malformed, TypeError, ValueError, AttributeError):
                for shaped in json.loads(str((fields or {}).get("e", "[]"))):
                    event = event_of(shaped)
                    if isinstance(event, ReplyEvent) and event.message_id == message_id:
                        events[event.seq] = event
                        chat_id = event.chat_id or chat_id
        for event in unsent:
            events[event.seq] = event
        if chat_id is None or not events:
            return None
        return Replay(chat_id, user_id, [events[seq] for seq in sorted(events)])

    async def replies_of(self, user_id: str) -> list[KeptReply]:
        index = self._index(user_id)
        try:
            kept = {str(k): str(v) for k, v in (await self._redis.hgetall(index)).items()}
        except (RedisError, OSError):
            self._failing.note()
            kept = {}
        now_ms = int(time.time() * 1000)
        found: dict[str, KeptReply] = {}
        gone: list[str] = []
        for message_id, raw in kept.items():
            if message_id.startswith(ENDED):
                continue
            ended_raw = kept.get(ENDED + message_id)
            try:
                shaped = json.loads(raw)
                ended = int(ended_raw) if ended_raw is not None else None
                started = int(shaped["s"])
                chat_id = str(shaped["c"])
            except (TypeError, ValueError, KeyError):
                gone.append(message_id)
                continue
            if ended is not None and ended + self._ttl_ms < now_ms:
                gone += [message_id, ENDED + message_id]
                continue
            found[message_id] = KeptReply(chat_id, message_id, started, ended)
        if gone:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.hdel(index, *gone)
        # What this replica has not written yet (being written, then still pending)
        # is newer than Redis: a reply whose end is not in Redis yet has ended all
        # the same (a tab opening just then must not be sent it as running).
        for batches in (self._in_flight, self._pending):
            for (user, message_id), pending in batches.items():
                if user != user_id:
                    continue
                there = found.get(message_id)
                if there is None:
                    found[message_id] = KeptReply(
                        pending.chat_id, message_id, pending.started_ms or now_ms, pending.ended_ms
                    )
                elif there.ended_ms is None and pending.ended_ms is not None:
                    found[message_id] = replace(there, ended_ms=pending.ended_ms)
        return list(found.values())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._flush()
        await self._redis.aclose()
