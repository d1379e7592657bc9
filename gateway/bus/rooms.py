"""The room fan-out on Redis (`WEBSOCKET_MANAGER=redis`): each room's events reach
the replicas with members in it, and only those.

Channels, under `REDIS_KEY_PREFIX` (default `gw:`)::

    room:<room>   events for a room (`wire.message`); a replica subscribes only to
                  the rooms it has members in, so it decodes only what it
                  delivers (Open WebUI publishes everything on one channel:
                  every instance decodes every token, its #28173); and a room is
                  published only when another replica watches it (`mirror.py`):
                  purely local rooms cost nothing
    mirror        who watches which room (`wire.announcement`)

Who is alive comes from the replica registry (`replicas.py`, its heartbeats):
the replicas to wait for after a reconnect, and those the mirror may forget.

Theory of operation:

* Handle locally, then publish: the hub has delivered to this process's
  connections before `publish` is called, which never blocks.  Events wait
  in the sender's bounded queue; their channels are chosen when sent, from
  the mirror; until the mirror is synced (after every (re)connect: each
  replica has re-announced its rooms, or 6 s passed) they wait instead.  So
  an outage or a new replica loses nothing that fits in the queue; past its
  bound the oldest are dropped, counted and logged.
* Events come faster than they go when this replica's loop is too busy to
  send them (a flood of replies on a small machine): from half the bound
  the bus is `crowded()`, and each reply awaits `room()` before it reads
  its model server again (at most `ROOM_WAIT_S` each time).  The replies
  slow down, and their model servers with them; nothing is dropped.  An
  outage never makes a reply wait: Redis may be gone for minutes.
* Each message is stamped with this replica's id and a number: a replica
  drops its own, and the copies of one event that reach it through several
  of its rooms, from the header alone.
* The listener handles each message on its own (`link.Listener`): a
  malformed one is counted in `malformed` and skipped; only a lost
  connection makes it reconnect (0.1 s doubling to 5 s), re-subscribe and
  re-announce every watched room, `problem()` saying so meanwhile.
* The listener never awaits.  A finished reply too big to carry arrives
  without its text; the store read that completes it runs in a bounded set
  of tasks, and the events of the same origin that follow it wait behind it
  (a replica's events stay in order; the other replicas' are not held up).
* Messages are bounded (`wire.split`): a huge delta is cut (and put together
  again by the receiving replica, one event as it was published), a huge finished
  reply travels without its text, anything else huge is refused and logged;
  one event can never break pub/sub for everyone (Open WebUI #25975).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import RedisError

from gateway.bus import Deliver, LoadContent, room_set, wire
from gateway.bus.link import BACKOFF_MAX_S, Background, Complaints, Listener, Sender, client
from gateway.bus.mirror import Mirror
from gateway.edge import metrics
from gateway.events import Event, ReasoningDelta, ReplyFinished, TextDelta

log = logging.getLogger(__name__)

TICK_S = 1.0
MISSING_GRACE_S = 3.0
ANNOUNCE_CHUNK = 500
# Others reconnect within their backoff: wait that long to hear them again.
RESYNC_S = BACKOFF_MAX_S + 1.0
WATCH_TIMEOUT_S = 2.0
# The longest a reply waits for a crowded queue to drain before it goes on.
ROOM_WAIT_S = 2.0
LOAD_TIMEOUT_S = 5.0
STORE_READS = 64
# Cut deltas being put together again at once (`_pieced`): one a reply being relayed.
MAX_PIECED = 64


class Liveness(Protocol):
    """Who is alive, as the replica registry knows from the heartbeats."""

    replica_id: str

    async def live(self) -> set[str]: ...

    async def alive(self, replicas: Iterable[str]) -> set[str]: ...

    def problem(self) -> str | None: ...


@dataclasses.dataclass(slots=True)
class _Arrival:
    """An event of one origin waiting behind a store read (its own, or an earlier one's)."""

    rooms: list[str]
    event: Event
    ready: bool


class RedisRooms:
    def __init__(
        self,
        url: str,
        replicas: Liveness,
        prefix: str = "gw:",
        max_message_bytes: int = 256 * 1024,
        max_pending: int = 10_000,
    ) -> None:
        self.replica_id = replicas.replica_id
        self._replicas = replicas
        self._url = url
        self._prefix = prefix
        self._max_bytes = max_message_bytes
        self._max_pending = max_pending
        self._redis = client(url)
        self._listener = Listener(url, self, "rooms")
        self._sender = Sender(
            self._redis, max_pending, lambda: self._mirror.synced, self._route, events=True
        )
        self._reads = Background("store reads", STORE_READS)
        self._number = 0
        self._highest: dict[str, int] = {}  # origin → the last event number delivered
        self._waiting: dict[str, deque[_Arrival]] = {}  # origin → events behind a store read
        # A cut delta's pieces so far (`wire.split`), until its last: (origin, reply,
        # seq, kind) → texts.  At most MAX_PIECED at once (a replica that died mid-delta
        # leaves one behind: the oldest goes).
        self._pieces: dict[tuple[str, str, int, type], list[str]] = {}
        self._crowded = Complaints("bus dropped events waiting behind a store read")
        self._mirror = Mirror()
        self._gone_since: dict[str, float] = {}  # replica → when its beat was first missed
        self._watched: set[str] = set()
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # subscribed here
        self._announced: dict[str, asyncio.Future[None]] = {}  # announced to everyone
        self._subscriptions: dict[str, bool] = {}  # room → subscribe (or not), to be done
        self._resubscribe = asyncio.Event()
        self._synced_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliver: Deliver | None = None
        self._load: LoadContent | None = None

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _channel(self, room: str) -> str:
        return f"{self._prefix}room:{room}"

    @property
    def malformed(self) -> int:
        """Messages skipped as malformed (room events and announcements)."""
        return self._listener.malformed

    # -- life --------------------------------------------------------------------------
    async def start(self, deliver: Deliver, load: LoadContent) -> None:
        self._deliver, self._load = deliver, load
        loops = (self._listener.run, self._sender.run, self._subscriber, self._ticker)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=f"rooms-{loop.__name__}"))
        # Ready at start-up once connected and told by the others what they watch
        # (waiting at most briefly: events are held meanwhile, not lost).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced_now.wait(), WATCH_TIMEOUT_S)

    async def close(self) -> None:
        # What is queued (the last replies' ends) goes first.
        if self._listener.listening:
            await self._sender.drained(WATCH_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reads.close()
        await self._redis.aclose()
        await self._listener.close()

    def problem(self) -> str | None:
        """This fan-out's state, then the registry's: `/ready`'s one check of the bus."""
        if not self._listener.listening:
            return f"Redis at {self._url} is unreachable: {self._listener.last_error}"
        if not self._mirror.synced:
            missing = ", ".join(sorted(self._mirror.missing())) or "?"
            return f"syncing with the other replicas (waiting for {missing})"
        return self._replicas.problem()

    # -- out ---------------------------------------------------------------------------
    def publish(self, rooms: Sequence[str], event: Event) -> None:
        shared = room_set(rooms)
        # Usually (a sticky balancer, one tab) no other replica watches any of
        # the rooms: then an event costs Redis nothing.
        if not shared or (self._mirror.synced and not self._mirror.watched(shared)):
            return
        try:
            bodies = wire.split(shared, event, self._max_bytes)
        except wire.Undeliverable as exc:
            log.warning("event too big for the bus, not sent to other replicas: %s", exc)
            return
        metrics.HOT.bus_published += len(bodies)
        for encoded in bodies:
            self._number += 1
            self._sender.hold((shared, wire.message(self.replica_id, self._number, encoded)))

    def crowded(self) -> bool:
        # Only while events are going out: waiting on an outage would stall replies.
        return self._sender.crowded and self._listener.listening and self._mirror.synced

    async def room(self) -> None:
        metrics.HOT.bus_waits += 1
        await self._sender.room(ROOM_WAIT_S)

    def _route(self, pipe: Pipeline, item: tuple[list[str], str]) -> None:
        """One held event, to the channels of the rooms another replica watches now."""
        rooms, message = item
        for room in self._mirror.watched(rooms):
            pipe.publish(self._channel(room), message)

    # -- watching ----------------------------------------------------------------------
    def watch(self, room: str) -> None:
        """The hub's first local member of `room` arrived (it counts, not us):
        subscribe, and tell the other replicas to send this room's events here."""
        self._watched.add(room)
        loop = asyncio.get_running_loop()
        self._confirmed[room] = loop.create_future()
        self._announced[room] = loop.create_future()
        self._subscribe_later(room, True)
        self._announce([room], reset=False)

    def unwatch(self, room: str) -> None:
        self._watched.discard(room)
        self._confirmed.pop(room, None)
        self._announced.pop(room, None)
        self._subscribe_later(room, False)
        self._mirror_says("unwatch", [room])

    async def watching(self, rooms: Iterable[str]) -> None:
        """Subscribed here, and the announcement seen back on the mirror channel:
        Redis has then handed it to every other replica as well."""
        rooms = list(rooms)
        waits = [self._confirmed[room] for room in rooms if room in self._confirmed]
        waits += [self._announced[room] for room in rooms if room in self._announced]
        if waits and self._listener.listening:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), WATCH_TIMEOUT_S)

    def _announce(self, rooms: list[str], *, reset: bool) -> None:
        """ "These rooms are watched here" (`reset`: and no others), in chunks."""
        chunks = [rooms[i : i + ANNOUNCE_CHUNK] for i in range(0, len(rooms), ANNOUNCE_CHUNK)]
        for index, chunk in enumerate(chunks or [[]]):
            self._mirror_says("watch", chunk, reset=reset and index == 0)

    def _mirror_says(self, kind: str, rooms: list[str], reset: bool = False) -> None:
        said = wire.announcement(self.replica_id, kind, rooms, reset)
        self._sender.command("publish", self._key("mirror"), said)

    def _subscribe_later(self, room: str, on: bool) -> None:
        self._subscriptions[room] = on
        self._resubscribe.set()

    async def _subscriber(self) -> None:
        """(Un)subscribes what `watch` and `unwatch` asked, in one command each per
        burst.  While reconnecting it waits: `connected` subscribes every watched room."""
        while True:
            await self._resubscribe.wait()
            await self._listener.until_listening()
            self._resubscribe.clear()
            asked, self._subscriptions = self._subscriptions, {}
            pubsub = self._listener.pubsub
            on = [self._channel(room) for room, yes in asked.items() if yes]
            off = [self._channel(room) for room, yes in asked.items() if not yes]
            with contextlib.suppress(RedisError, OSError):
                if pubsub is not None and on:
                    await pubsub.subscribe(*on)
                if pubsub is not None and off:
                    await pubsub.unsubscribe(*off)

    # -- the listener's connection (link.Handler) ------------------------------------------
    async def connected(self, pubsub: PubSub) -> None:
        """Subscribe, tell everyone what is watched here, ask for their lists, and hold
        room events until each replica we know of (or that is alive) has answered."""
        rooms = [self._channel(room) for room in self._watched]
        await pubsub.subscribe(self._key("mirror"), *rooms)
        live = await self._replicas.live()
        expected = (live | self._mirror.replicas()) - {self.replica_id}
        self._mirror.begin_sync(expected, time.monotonic(), RESYNC_S)
        self._synced()
        self._announce(sorted(self._watched), reset=True)
        self._mirror_says("sync", [])

    def subscribed(self, channel: str) -> None:
        waiting = self._confirmed.get(channel.removeprefix(self._channel("")))
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def received(self, channel: str, data: str) -> None:
        if channel == self._key("mirror"):
            self._heard(wire.announcement_of(data))
        else:
            self._arrived(data)

    def lost(self) -> None:
        self._mirror.lost()
        self._synced_now.clear()

    # -- in ----------------------------------------------------------------------------
    def _heard(self, said: wire.Announcement) -> None:
        if said.sender == self.replica_id:
            if said.kind == "watch":  # our own announcement, back: it reached everyone
                for room in said.rooms:
                    waiting = self._announced.get(room)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(None)
            return
        if said.kind == "sync":
            self._announce(sorted(self._watched), reset=True)
            return
        self._mirror.apply(said.sender, said.kind, said.rooms, said.reset)
        self._synced()

    def _synced(self) -> None:
        """Once the mirror is up to date, room events held for it can go."""
        if self._mirror.check(time.monotonic()) and not self._synced_now.is_set():
            self._synced_now.set()
            self._sender.wake()

    def _arrived(self, data: str) -> None:
        origin, number = wire.header(data)
        if origin == self.replica_id or number <= self._highest.get(origin, 0):
            return  # ours, or a copy already delivered through another room
        self._highest[origin] = number
        metrics.HOT.bus_received += 1
        rooms, event, in_store, more = wire.decode(data)
        if isinstance(event, TextDelta | ReasoningDelta):
            whole = self._pieced(origin, event, more)
            if whole is None:
                return  # more of it to come
            event = whole
        unread = in_store and isinstance(event, ReplyFinished) and event.chat_id is not None
        waiting = self._waiting.get(origin)
        if not unread and not waiting:
            self._hand_on(rooms, event)  # the usual case: nothing in the way
            return
        if waiting is None:
            waiting = self._waiting[origin] = deque()
        if len(waiting) >= self._max_pending:
            metrics.HOT.bus_dropped += 1
            self._crowded.note(origin=origin)
            return
        arrival = _Arrival(rooms, event, ready=not unread)
        waiting.append(arrival)
        if isinstance(event, ReplyFinished) and unread:
            arrival.ready = not self._reads.spawn(self._read(origin, arrival, event))
            # (no reader free: on at once without its text, rather than never)
        self._flush(origin)

    def _pieced(
        self, origin: str, event: TextDelta | ReasoningDelta, more: bool
    ) -> TextDelta | ReasoningDelta | None:
        """A delta put together again from its pieces (None until its last): one event
        to every outbox, as it was published.  Pieces of one seq delivered apart, a
        connection that fell behind between two would be followed from before that
        seq and get the pieces it had again."""
        if not more and not self._pieces:
            return event  # the usual case: not cut, nothing being put together
        key = (origin, event.message_id, event.seq, type(event))
        texts = self._pieces.pop(key, None)
        if texts is None and not more:
            return event  # not cut
        texts = [*(texts or []), event.text]
        if more:
            self._pieces[key] = texts
            if len(self._pieces) > MAX_PIECED:
                del self._pieces[next(iter(self._pieces))]
            return None
        return dataclasses.replace(event, text="".join(texts))

    async def _read(self, origin: str, arrival: _Arrival, event: ReplyFinished) -> None:
        """A finished reply's text from the store, then it and what waited behind it."""
        content = None
        try:
            if self._load is not None and event.chat_id is not None:
                load = self._load(event.chat_id, event.message_id)
                content = await asyncio.wait_for(load, LOAD_TIMEOUT_S)
        except Exception as exc:  # a store that fails or hangs: the reply ends without text
            log.warning(
                "bus could not read a finished reply's text",
                extra={"message_id": event.message_id, "error": repr(exc)},
            )
        arrival.event = dataclasses.replace(event, content=content or "")
        arrival.ready = True
        self._flush(origin)

    def _flush(self, origin: str) -> None:
        waiting = self._waiting.get(origin)
        while waiting and waiting[0].ready:
            arrival = waiting.popleft()
            self._hand_on(arrival.rooms, arrival.event)
        if not waiting:
            self._waiting.pop(origin, None)

    def _hand_on(self, rooms: list[str], event: Event) -> None:
        if self._deliver is not None:
            self._deliver(rooms, event)

    # -- every second ------------------------------------------------------------------
    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            with contextlib.suppress(RedisError):  # the listener reports the outage
                await self._forget_the_dead()
            self._stop_waiting()

    async def _forget_the_dead(self) -> None:
        """Replicas leave the mirror once their beat has been missing a while."""
        known = list(self._mirror.replicas())
        alive = await self._replicas.alive(known)
        now = time.monotonic()
        for replica in known:
            if replica in alive:
                self._gone_since.pop(replica, None)
            elif now - self._gone_since.setdefault(replica, now) >= MISSING_GRACE_S:
                self._mirror.forget(replica)
                self._gone_since.pop(replica, None)
                self._highest.pop(replica, None)

    def _stop_waiting(self) -> None:
        """The sync's wait runs out even when no message comes to check it."""
        if self._listener.listening and not self._mirror.synced:
            missing = sorted(self._mirror.missing())
            self._synced()
            if self._mirror.synced and missing:
                log.warning(
                    "bus stopped waiting for replicas that did not answer",
                    extra={"replicas": missing},
                )
