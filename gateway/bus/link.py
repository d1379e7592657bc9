"""Redis plumbing shared by the room fan-out (`rooms.py`) and the replica
registry (`replicas.py`): a listener that never dies, a bounded sender, a
bounded set of background tasks, and warnings that cannot flood the log.

Theory of operation::

    Listener.run ── connect ─▶ handler.connected(pubsub)   subscribe, resync
        │ loop: get_message ─▶ handler.subscribed(channel)  a SUBSCRIBE confirmed
        │                    └▶ handler.received(channel, data)
        │       one message's fault (Malformed, bad UTF-8, a handler's bug): counted
        │       (`malformed`, `failed`), logged at most every 10 s with a count,
        │       skipped.  Never a reconnect: only the connection's own failure is.
        └ the connection fails: handler.lost(), `problem()` says so, a warning,
          0.1 s doubling to 5 s, again (re-subscribing everything in `connected`)

    Sender: command(...) / hold(item) ──bounded deques──▶ one task sends them in
        pipelined batches of up to 512 (one round trip for many); held items
        wait while `gate()` is false (the rooms' mirror not synced); a batch
        that fails to reach Redis goes back to the front, in order, and is
        retried with the same backoff; a command Redis refuses (an ACL, a full
        Redis) is logged and dropped, not counted as dropped events.  From half
        of `max_pending` queued it is `crowded` until it is down to a quarter
        (never while sending fails: Redis may be gone for minutes): a producer
        that can wait (a reply) awaits `room()` before it makes more.  Past `max_pending` the oldest
        are dropped, counted (`gateway_bus_dropped_total`) and logged.

    Background: work a handler must not await inline (a store read, a reply's
        cancellation) runs as a task; at most `limit` at once, the rest refused,
        counted and logged, so a flood cannot grow memory without bound.

The listener's connection reads bytes and decodes each message on its own, so
a message that is not UTF-8 is one bad message, not a broken connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import RedisError

from gateway.bus.wire import Malformed
from gateway.edge import metrics

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
BATCH = 512
# A batch on its way longer than this: Redis hangs (stopped, a long script, a
# network that drops everything), and the queue stops counting as crowded.
STALLED_S = 2.0
COMPLAIN_EVERY_S = 10.0


def client(url: str, *, text: bool = True, timeout_s: float | None = None) -> aioredis.Redis:
    """A connection pool to `url`; `text=False` for the listener (it decodes itself);
    `timeout_s`: each command's answer waited for at most that long (a Redis that
    hangs rather than refuses)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=text,
        socket_connect_timeout=2 if timeout_s is None else timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=10,
    )


class Complaints:
    """One warning at most every `every_s`, saying how many happened since the last."""

    def __init__(self, message: str, every_s: float = COMPLAIN_EVERY_S) -> None:
        self._message = message
        self._every_s = every_s
        self._unsaid = 0
        self._next = 0.0

    def note(self, *, exc_info: bool = False, **extra: Any) -> None:
        self._unsaid += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning(self._message, extra={**extra, "count": self._unsaid}, exc_info=exc_info)
            self._unsaid, self._next = 0, now + self._every_s


class Handler(Protocol):
    """What a listener's owner does with its connection."""

    async def connected(self, pubsub: PubSub) -> None:
        """Just (re)connected: subscribe (and whatever must follow a reconnect)."""
        ...

    def subscribed(self, channel: str) -> None: ...

    def received(self, channel: str, data: str) -> None:
        """One message; must not await.  Raise `Malformed` to have it counted and skipped."""
        ...

    def lost(self) -> None: ...


class Listener:
    """One pub/sub connection, kept up for as long as `run` runs."""

    def __init__(self, url: str, handler: Handler, name: str) -> None:
        self._redis = client(url, text=False)
        self._handler = handler
        self._name = name
        self.pubsub: PubSub | None = None
        self.listening = False
        self.connections = 0  # successful (re)connections, for tests and logs
        self.last_error = "not started"
        self.malformed = 0  # messages skipped as untrustworthy
        self.failed = 0  # messages a handler failed on (a bug of ours)
        self._up = asyncio.Event()
        self._bad = Complaints("bus skipped malformed messages")
        self._broken = Complaints("bus handler failed on a message; skipped")

    async def until_listening(self) -> None:
        await self._up.wait()

    async def run(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            pubsub = self._redis.pubsub()
            try:
                self.pubsub = pubsub
                await self._handler.connected(pubsub)
                self._now_listening()
                delay = BACKOFF_MIN_S
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection's failure: messages never get here
                self._now_lost(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            finally:
                self.pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _now_listening(self) -> None:
        said = "bus reconnected to Redis" if self.connections else "bus connected to Redis"
        (log.warning if self.connections else log.info)(said, extra={"part": self._name})
        self.connections += 1
        self.listening = True
        self._up.set()

    def _now_lost(self, exc: Exception, delay: float) -> None:
        self.listening = False
        self._up.clear()
        self.last_error = str(exc) or type(exc).__name__
        self._handler.lost()
        log.warning(
            "bus listener lost Redis; reconnecting",
            extra={"part": self._name, "error": self.last_error, "retry_in_s": delay},
        )

    async def _pump(self, pubsub: PubSub) -> None:
        while True:
            item = await pubsub.get_message(timeout=None)
            if item is None:
                continue
            kind = item["type"]
            if kind == "message":
                self._one(item["channel"], item["data"])
            elif kind == "subscribe":
                self._handler.subscribed(item["channel"].decode(errors="replace"))

    def _one(self, channel: bytes, data: bytes) -> None:
        """One message, on its own: whatever it does wrong stays with it."""
        name = channel.decode(errors="replace")
        try:
            self._handler.received(name, data.decode())
        except (Malformed, UnicodeDecodeError) as exc:
            self.malformed += 1
            metrics.HOT.bus_malformed += 1
            self._bad.note(part=self._name, channel=name, error=str(exc)[:200])
        except Exception:
            self.failed += 1
            self._broken.note(exc_info=True, part=self._name, channel=name)

    async def close(self) -> None:
        await self._redis.aclose()


class Sender:
    """Commands for Redis, queued without blocking and sent by one task."""

    def __init__(
        self,
        redis: aioredis.Redis,
        max_pending: int,
        gate: Callable[[], bool] = lambda: True,
        route: Callable[[Pipeline, Any], None] | None = None,
        events: bool = False,
    ) -> None:
        self._redis = redis
        # Its items are room events: what it drops counts in gateway_bus_dropped_total.
        self._events = events
        self._max = max_pending
        self._gate = gate  # may the held items go now?
        self._route = route  # puts one held item's commands in a pipeline
        self.commands: deque[tuple[Any, ...]] = deque()
        self.held: deque[Any] = deque()
        self.dropped = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._high, self._low = max(1, max_pending // 2), max_pending // 4
        self._roomy = asyncio.Event()  # set unless crowded
        self._roomy.set()
        self._refused = Complaints(
            "Redis refused bus commands; they are not sent again"
            " (`gateway check-config --connect` names what Redis refuses)"
        )
        self._send_failed = False  # the last batch failed: Redis refuses, or is gone
        self._sending_since: float | None = None  # a batch is on its way
        self._running = False

    @property
    def crowded(self) -> bool:
        """More is queued than sent of late: from half the bound down to a quarter.
        Only while sending goes on: not once a batch failed, nor while one has been
        on its way for `STALLED_S`, nor with no `run` running — waiting for Redis to
        come back would stall the producers for as long."""
        if self._roomy.is_set() or self._send_failed or not self._running:
            return False
        since = self._sending_since
        return since is None or time.monotonic() - since < STALLED_S

    async def room(self, timeout_s: float) -> None:
        """Until no longer crowded (at most `timeout_s`: a producer waits, never for
        good).  A cancellation (a stop, a shutdown) always goes through."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._roomy.wait()

    def command(self, *item: Any) -> None:
        """("publish", channel, message), ("hset", key, field, value), …"""
        self._bounded(self.commands, item)

    def hold(self, item: Any) -> None:
        """An item for `route`, sent once the gate opens (kept with when it came, for
        `gateway_bus_send_lag_seconds`)."""
        self._bounded(self.held, (time.monotonic(), item))

    def wake(self) -> None:
        """The gate may have opened."""
        self._wakeup.set()

    def _bounded(self, queue: deque[Any], item: Any) -> None:
        if len(queue) >= self._max:
            queue.popleft()
            self.dropped += 1
            if self._events:
                metrics.HOT.bus_dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("bus queue full, dropping", extra={"dropped": self.dropped})
        queue.append(item)
        if len(self.commands) + len(self.held) >= self._high:  # as `run` counts
            self._roomy.clear()
        self._idle.clear()
        self._wakeup.set()

    async def drained(self, timeout_s: float) -> None:
        """Until everything queued is sent (at most `timeout_s`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    def _sendable(self) -> bool:
        return bool(self.commands or (self.held and self._gate()))

    async def run(self) -> None:
        self._running = True
        try:
            await self._sending()
        finally:
            self._running = False
            self._roomy.set()  # nobody waits for a sender that is gone

    async def _sending(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._sendable():
                if await self._batch():
                    delay = BACKOFF_MIN_S
                    if len(self.commands) + len(self.held) <= self._low:
                        self._roomy.set()
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            if not self.commands and not self.held:
                self._idle.set()

    async def _batch(self) -> bool:
        commands = _take(self.commands)
        held = _take(self.held) if self._gate() else []
        pipe = self._redis.pipeline(transaction=False)
        for name, *args in commands:
            getattr(pipe, name)(*args)
        if self._route is not None:
            for _, item in held:
                self._route(pipe, item)
        self._sending_since = time.monotonic()
        try:
            # A command Redis refuses (a user without a command's permission, a full
            # Redis refusing writes) is logged and not sent again: retried, it would
            # hold up everything behind it for good.  What fails to reach Redis is.
            results = await pipe.execute(raise_on_error=False)
            refused = [result for result in results if isinstance(result, RedisError)]
            if refused:
                self._refused.note(refused=len(refused), error=str(refused[0]))
            self._send_failed = False
            if held:
                now = time.monotonic()
                for since, _ in held:
                    metrics.BUS_SEND_LAG.observe(now - since)
            return True
        except RedisError as exc:
            self._send_failed = True
            self._roomy.set()  # those waiting go on: Redis may be gone for minutes
            # Back at the front, in order, for when Redis answers again (the first
            # try after a restart often meets a dead pooled connection); only the
            # queues' bound drops anything.
            self.commands.extendleft(reversed(commands))
            self.held.extendleft(reversed(held))
            log.warning(
                "bus could not publish; retrying",
                extra={"queued": len(self.commands) + len(self.held), "error": str(exc)},
            )
            return False
        finally:
            self._sending_since = None


def _take(queue: deque[Any]) -> list[Any]:
    return [queue.popleft() for _ in range(min(BATCH, len(queue)))]


class Background:
    """Tasks for what a listener must not await; at most `limit` at once."""

    def __init__(self, name: str, limit: int) -> None:
        self._name = name
        self._limit = limit
        self._tasks: set[asyncio.Future[None]] = set()
        self.refused = 0
        self._full = Complaints("bus background work refused: too much at once")
        self._failing = Complaints("bus background work failed")

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[None]) -> bool:
        """Run `work` as a task; False (and `work` closed, unrun) when `limit` run already."""
        if len(self._tasks) >= self._limit:
            if inspect.iscoroutine(work):
                work.close()
            self.refused += 1
            self._full.note(part=self._name, limit=self._limit)
            return False
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failing.note(part=self._name, error=repr(task.exception()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
