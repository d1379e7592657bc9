"""The bus on Redis (`WEBSOCKET_MANAGER=redis`): what replicas share, and how cheaply.

Keys and channels, all under `REDIS_KEY_PREFIX` (default `gw:`)::

    room:<room>        channel   events for a room; a replica subscribes only to the
                                 rooms it has members in, so it decodes only what it
                                 delivers (Open WebUI publishes everything on one
                                 channel: every instance decodes every token, its #28173);
                                 and a room is published only when another replica
                                 watches it (`mirror.py`): purely local rooms cost nothing
    control            channel   commands (cancel replies wherever they run), and the
                                 watcher mirror's announcements
    replica:<id>       string    heartbeat, expires 5 s after the replica stops
    tasks              hash      task id → the reply running (which replica, rooms)
    presence           hash      replica id → its connections, for /ws/stats
    sessions:<id>      set       a replica's Engine.IO sessions: a misrouted poll says where
    takeover:<id>      string    the one survivor that ends a dead replica's replies

Theory of operation:

* Publishing never blocks.  Room events and commands wait in two bounded
  queues; one task sends them in pipelined batches (one round trip for
  many).  A room event's channels are chosen when it is sent, from the
  mirror; until the mirror is synced (after every (re)connect: each replica
  has re-announced its rooms, or 6 s passed) room events wait instead.  So an
  outage or a new replica loses nothing that fits in the queue; past its
  bound the oldest are dropped, counted and logged.
* The listener never dies silently: on any error it logs, marks the bus
  unhealthy (`/ready` says so), waits (0.1 s doubling to 5 s) and reconnects,
  re-subscribing and re-announcing every watched room.
* Messages are bounded (`wire.split`): a huge delta is cut, a huge finished
  reply travels without its text (read from the store), anything else huge is
  refused and logged; one event can never break pub/sub for everyone
  (Open WebUI #25975).
* A replica that stops beating is dead 3 s after its beat expired (5 s); a
  survivor (whoever wins `takeover:<id>`) ends its replies: stored with their
  last draft and a note, and `ReplyFailed` published to their rooms; then it
  removes the dead replica's presence and sessions, so nothing it leaves
  behind outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.bus import Deliver, LoadContent, OnControl, OnOrphan, TaskInfo, room_set, wire
from gateway.bus.mirror import Mirror
from gateway.events import Event, ReplyFinished
from gateway.fanout.presence import Seat

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
REPLICA_TTL_S = 5
JANITOR_S = 2.0
MISSING_GRACE_S = 3.0
ANNOUNCE_CHUNK = 500
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
# Others reconnect within their backoff: wait that long to hear them again.
RESYNC_S = BACKOFF_MAX_S + 1.0
WATCH_TIMEOUT_S = 2.0
BATCH = 512
TAKEOVER_TTL_S = 60


class RedisBus:
    def __init__(
        self,
        url: str,
        prefix: str = "gw:",
        max_message_bytes: int = 256 * 1024,
        max_pending: int = 10_000,
    ) -> None:
        self.replica_id = uuid.uuid4().hex[:12]
        self._url = url
        self._prefix = prefix
        self._max_bytes = max_message_bytes
        self._max_pending = max_pending
        self._redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, health_check_interval=10
        )
        # (shared rooms, message): channels are chosen when sent.
        self._events: deque[tuple[list[str], str]] = deque()
        self._commands: deque[tuple[str, ...]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._number = 0
        self._highest: dict[str, int] = {}
        self._mirror = Mirror()
        self._watched: set[str] = set()
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._announced: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._listening = False
        self._listening_now = asyncio.Event()
        self._synced_now = asyncio.Event()
        self._ever_listened = False
        self._last_error = "not started"
        self._dropped = 0
        self._seats: list[Seat] = []
        self._presence_dirty = True
        self._remote_seats: list[Seat] = []
        self._local_tasks: dict[str, str] = {}  # task id → its registry entry
        self._missing_since: dict[str, float] = {}  # replica → when its beat was first missed
        self._gone_since: dict[str, float] = {}  # the same, for the mirror
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._deliver: Deliver | None = None
        self._on_control: OnControl | None = None
        self._on_orphan: OnOrphan | None = None
        self._load: LoadContent | None = None

    # -- names -----------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _channel(self, room: str) -> str:
        return f"{self._prefix}room:{room}"

    # -- life --------------------------------------------------------------------
    async def start(
        self, deliver: Deliver, on_control: OnControl, on_orphan: OnOrphan, load: LoadContent
    ) -> None:
        self._deliver, self._on_control = deliver, on_control
        self._on_orphan, self._load = on_orphan, load
        for loop in (self._listen, self._send, self._heartbeat, self._janitor):
            self._tasks.append(asyncio.create_task(loop(), name=f"bus-{loop.__name__}"))
        # Ready at start-up once connected and told by the others what they watch
        # (waiting at most briefly: events are held meanwhile, not lost).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced_now.wait(), WATCH_TIMEOUT_S)

    async def close(self) -> None:
        # What is queued (the last replies' ends, their tasks' removal) goes first.
        if self._listening:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), WATCH_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._key(f"replica:{self.replica_id}"))
            await self._redis.hdel(self._key("presence"), self.replica_id)
        await self._redis.aclose()

    def problem(self) -> str | None:
        if not self._listening:
            return f"Redis at {self._url} is unreachable: {self._last_error}"
        if not self._mirror.synced:
            missing = ", ".join(sorted(self._mirror.missing())) or "?"
            return f"syncing with the other replicas (waiting for {missing})"
        return None

    # -- events ----------------------------------------------------------------
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
        for encoded in bodies:
            self._number += 1
            self._bounded(
                self._events, (shared, wire.message(self.replica_id, self._number, encoded))
            )

    def _command(self, *item: str) -> None:
        self._bounded(self._commands, item)

    def _bounded(self, queue: deque[Any], item: Any) -> None:
        if len(queue) >= self._max_pending:
            queue.popleft()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("bus queue full, dropping", extra={"dropped": self._dropped})
        queue.append(item)
        self._idle.clear()
        self._wakeup.set()

    def watch(self, room: str) -> None:
        """The hub's first local member of `room` arrived (it counts, not us):
        subscribe, and tell the other replicas to send this room's events here."""
        self._watched.add(room)
        loop = asyncio.get_running_loop()
        self._confirmed[room] = loop.create_future()
        self._announced[room] = loop.create_future()
        if self._pubsub is not None and self._listening:
            self._background(self._subscribe([room]))
        self._announce([room], reset=False)

    def unwatch(self, room: str) -> None:
        self._watched.discard(room)
        self._confirmed.pop(room, None)
        self._announced.pop(room, None)
        if self._pubsub is not None and self._listening:
            self._background(self._unsubscribe(room))
        self._command("publish", self._key("control"), self._control("unwatch", [room]))

    def _announce(self, rooms: list[str], *, reset: bool) -> None:
        """ "These rooms are watched here" (`reset`: and no others), in chunks."""
        chunks = [rooms[i : i + ANNOUNCE_CHUNK] for i in range(0, len(rooms), ANNOUNCE_CHUNK)]
        for index, chunk in enumerate(chunks or [[]]):
            message = self._control("watch", chunk, reset=reset and index == 0)
            self._command("publish", self._key("control"), message)

    def _control(self, kind: str, rooms: list[str], **extra: Any) -> str:
        return json.dumps({"bus": kind, "rooms": rooms, "from": self.replica_id, **extra})

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def watching(self, rooms: Iterable[str]) -> None:
        """Subscribed here, and the announcement seen back on the control channel:
        Redis has then handed it to every other replica as well."""
        rooms = list(rooms)
        waits = [self._confirmed[room] for room in rooms if room in self._confirmed]
        waits += [self._announced[room] for room in rooms if room in self._announced]
        if waits and self._listening:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), WATCH_TIMEOUT_S)

    async def _subscribe(self, rooms: list[str]) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.subscribe(*(self._channel(room) for room in rooms))

    async def _unsubscribe(self, room: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(self._channel(room))

    # -- control -----------------------------------------------------------------
    def broadcast(self, message: dict[str, Any]) -> None:
        payload = json.dumps({**message, "from": self.replica_id})
        self._command("publish", self._key("control"), payload)

    # -- the loops ---------------------------------------------------------------
    async def _listen(self) -> None:
        delay = BACKOFF_MIN_S
        room_prefix = self._channel("")
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._register()
                await pubsub.subscribe(self._key("control"))
                self._pubsub = pubsub
                if self._watched:
                    await self._subscribe(list(self._watched))
                await self._resync()
                if self._ever_listened:
                    log.warning("bus reconnected to Redis", extra={"replica": self.replica_id})
                else:
                    log.info("bus connected to Redis", extra={"replica": self.replica_id})
                self._listening, self._ever_listened, delay = True, True, BACKOFF_MIN_S
                self._listening_now.set()
                while True:
                    item = await pubsub.get_message(timeout=None)
                    if item is None:
                        continue
                    kind, channel = item["type"], item["channel"]
                    if kind == "subscribe" and channel.startswith(room_prefix):
                        waiting = self._confirmed.get(channel.removeprefix(room_prefix))
                        if waiting is not None and not waiting.done():
                            waiting.set_result(None)
                    elif kind == "message":
                        await self._received(channel, item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive anything one message does
                self._listening = False
                self._listening_now.clear()
                self._mirror.lost()
                self._synced_now.clear()
                self._last_error = str(exc) or type(exc).__name__
                log.warning(
                    "bus listener lost Redis; reconnecting",
                    extra={"error": self._last_error, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _register(self) -> None:
        """After (re)connecting: a Redis that restarted empty learns again what runs here.
        The heartbeat goes first, so no survivor takes these tasks for orphans."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key(f"replica:{self.replica_id}"), int(time.time()), ex=REPLICA_TTL_S)
        for task_id, shaped in self._local_tasks.items():
            pipe.hset(self._key("tasks"), task_id, shaped)
        await pipe.execute()
        self._presence_dirty = True

    async def _resync(self) -> None:
        """Tell everyone what is watched here, ask for their lists, and hold room
        events until each replica we know of (or that is alive) has answered."""
        live = {
            key.removeprefix(self._key("replica:"))
            async for key in self._redis.scan_iter(match=self._key("replica:*"))
        }
        expected = (live | self._mirror.replicas()) - {self.replica_id}
        self._mirror.begin_sync(expected, time.monotonic(), RESYNC_S)
        self._synced()
        self._announce(sorted(self._watched), reset=True)
        self._command("publish", self._key("control"), self._control("sync", []))

    async def _received(self, channel: str, data: str) -> None:
        if channel == self._key("control"):
            message = json.loads(data)
            if "bus" in message:
                self._on_bus_control(message)
            elif message.get("from") != self.replica_id and self._on_control is not None:
                await self._on_control(message)
            return
        origin, number = wire.header(data)
        if origin == self.replica_id or number <= self._highest.get(origin, 0):
            return  # ours, or a copy already delivered through another room
        self._highest[origin] = number
        rooms, event, in_store = wire.decode(data)
        if in_store and isinstance(event, ReplyFinished) and event.chat_id is not None:
            content = await self._load(event.chat_id, event.message_id) if self._load else None
            event = dataclasses.replace(event, content=content or "")
        if self._deliver is not None:
            self._deliver(rooms, event)

    def _on_bus_control(self, message: dict[str, Any]) -> None:
        sender, kind, rooms = message["from"], message["bus"], message["rooms"]
        if sender == self.replica_id:
            if kind == "watch":  # our own announcement, back: it reached everyone
                for room in rooms:
                    waiting = self._announced.get(room)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(None)
            return
        if kind == "sync":
            self._announce(sorted(self._watched), reset=True)
            return
        self._mirror.apply(sender, kind, rooms, bool(message.get("reset")))
        self._synced()

    def _synced(self) -> None:
        """Once the mirror is up to date, room events held for it can go."""
        if self._mirror.check(time.monotonic()) and not self._synced_now.is_set():
            self._synced_now.set()
            self._wakeup.set()

    async def _send(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._commands or (self._events and self._mirror.synced):
                commands = self._take(self._commands)
                events = self._take(self._events) if self._mirror.synced else []
                pipe = self._redis.pipeline(transaction=False)
                for command, *args in commands:
                    getattr(pipe, command)(*args)
                for rooms, message in events:
                    for room in self._mirror.watched(rooms):
                        pipe.publish(self._channel(room), message)
                try:
                    await pipe.execute()
                    delay = BACKOFF_MIN_S
                except RedisError as exc:
                    # Back at the front, in order, for when Redis answers again
                    # (the first try after a restart often meets a dead pooled
                    # connection); only the queues' bound drops anything.
                    self._commands.extendleft(reversed(commands))
                    self._events.extendleft(reversed(events))
                    log.warning(
                        "bus could not publish; retrying",
                        extra={
                            "queued": len(self._commands) + len(self._events),
                            "error": str(exc),
                        },
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
            if not self._commands and not self._events:
                self._idle.set()

    @staticmethod
    def _take(queue: deque[Any]) -> list[Any]:
        return [queue.popleft() for _ in range(min(BATCH, len(queue)))]

    async def _heartbeat(self) -> None:
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                beat = self._key(f"replica:{self.replica_id}")
                pipe.set(beat, int(time.time()), ex=REPLICA_TTL_S)
                if self._presence_dirty:
                    seats = [[s.kind, s.user_id, s.session] for s in self._seats]
                    pipe.hset(self._key("presence"), self.replica_id, json.dumps(seats))
                pipe.hgetall(self._key("presence"))
                results = await pipe.execute()
                self._presence_dirty = False
                self._remote_seats = await self._live_seats(results[-1])
                await self._forget_the_dead()
            except RedisError:
                self._presence_dirty = True  # the listener reports the outage
            if self._listening and not self._mirror.synced:
                missing = sorted(self._mirror.missing())
                self._synced()
                if self._mirror.synced and missing:
                    log.warning(
                        "bus stopped waiting for replicas that did not answer",
                        extra={"replicas": missing},
                    )
            await asyncio.sleep(HEARTBEAT_S)

    async def _forget_the_dead(self) -> None:
        """Replicas leave the mirror once their beat has been missing a while."""
        known = list(self._mirror.replicas())
        alive = await self._alive(known)
        now = time.monotonic()
        for replica in known:
            if replica in alive:
                self._gone_since.pop(replica, None)
            elif now - self._gone_since.setdefault(replica, now) >= MISSING_GRACE_S:
                self._mirror.forget(replica)
                self._gone_since.pop(replica, None)

    async def _live_seats(self, presence: dict[str, str]) -> list[Seat]:
        others = [replica for replica in presence if replica != self.replica_id]
        alive = await self._alive(others)
        return [
            Seat(kind, user_id, session)
            for replica in others
            if replica in alive
            for kind, user_id, session in json.loads(presence[replica])
        ]

    async def _alive(self, replicas: Iterable[str]) -> set[str]:
        replicas = list(dict.fromkeys(replicas))
        if not replicas:
            return set()
        values = await self._redis.mget([self._key(f"replica:{r}") for r in replicas])
        return {replica for replica, value in zip(replicas, values, strict=True) if value}

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_S)
            try:
                await self._take_over_dead()
            except RedisError:
                pass  # the listener reports the outage
            except Exception:
                log.exception("bus janitor failed")

    async def _take_over_dead(self) -> None:
        tasks = await self._all_tasks()
        # Every replica writes its presence when it starts: the list of who was ever here.
        known = {task.replica for task in tasks} | set(await self._present())
        alive = await self._alive(known)
        now = time.monotonic()
        missing = known - alive
        self._missing_since = {r: self._missing_since.get(r, now) for r in missing}
        # Dead: its beat expired and stayed missing a while (a live replica whose
        # Redis restarted empty beats again within a second of reconnecting).
        dead = [r for r in missing if now - self._missing_since[r] >= MISSING_GRACE_S]
        for replica in dead:
            key = self._key(f"takeover:{replica}")
            if not await self._redis.set(key, self.replica_id, nx=True, ex=TAKEOVER_TTL_S):
                continue
            orphans = [task for task in tasks if task.replica == replica]
            log.warning(
                "replica stopped beating; ending its replies",
                extra={"replica": replica, "replies": len(orphans)},
            )
            for task in orphans:
                if self._on_orphan is not None:
                    await self._on_orphan(task)
                await self._redis.hdel(self._key("tasks"), task.task_id)
            await self._redis.hdel(self._key("presence"), replica)
            await self._redis.delete(self._key(f"sessions:{replica}"))

    # -- shared registries ----------------------------------------------------------
    def task_started(self, task: TaskInfo) -> None:
        shaped = {
            "chat_id": task.chat_id,
            "message_id": task.message_id,
            "user_id": task.user_id,
            "rooms": list(task.rooms),
            "replica": self.replica_id,
        }
        self._local_tasks[task.task_id] = json.dumps(shaped)
        self._command("hset", self._key("tasks"), task.task_id, self._local_tasks[task.task_id])

    def task_ended(self, task_id: str) -> None:
        self._local_tasks.pop(task_id, None)
        self._command("hdel", self._key("tasks"), task_id)

    async def _all_tasks(self) -> list[TaskInfo]:
        raw = cast(dict[str, str], await self._redis.hgetall(self._key("tasks")))
        tasks = []
        for task_id, value in raw.items():
            shaped = json.loads(value)
            tasks.append(
                TaskInfo(
                    task_id,
                    shaped["chat_id"],
                    shaped["message_id"],
                    shaped["user_id"],
                    tuple(shaped["rooms"]),
                    shaped["replica"],
                )
            )
        return tasks

    async def remote_tasks(self) -> list[TaskInfo]:
        try:
            tasks = [task for task in await self._all_tasks() if task.replica != self.replica_id]
            alive = await self._alive(task.replica for task in tasks)
        except RedisError:
            return []
        return [task for task in tasks if task.replica in alive]

    def session_opened(self, sid: str) -> None:
        self._command("sadd", self._key(f"sessions:{self.replica_id}"), sid)

    def session_closed(self, sid: str) -> None:
        self._command("srem", self._key(f"sessions:{self.replica_id}"), sid)

    async def _present(self) -> list[str]:
        return [str(replica) for replica in await self._redis.hkeys(self._key("presence"))]

    async def session_replica(self, sid: str) -> str | None:
        try:
            others = [r for r in await self._present() if r != self.replica_id]
            alive = sorted(await self._alive(others))
            pipe = self._redis.pipeline(transaction=False)
            for replica in alive:
                pipe.sismember(self._key(f"sessions:{replica}"), sid)
            held = await pipe.execute()
        except RedisError:
            return None
        return next((r for r, has in zip(alive, held, strict=True) if has), None)

    def presence_changed(self, seats: list[Seat]) -> None:
        self._seats = seats
        self._presence_dirty = True

    def remote_seats(self) -> list[Seat]:
        return list(self._remote_seats)
