"""The registry of replicas on Redis (`WEBSOCKET_MANAGER=redis`): who is alive,
what runs where, who is connected where, commands to everyone, and the end of
a replica that died.

Keys and channels, all under `REDIS_KEY_PREFIX` (default `gw:`)::

    replica:<id>       string    heartbeat, expires 5 s after the replica stops
    tasks              hash      task id → the reply running (which replica, rooms)
    answering          hash      [chat id, message id] → the claim of the reply
                                 being started or running into it (`claims.py`)
    presence           hash      replica id → its connections, for /ws/stats
    sessions:<id>      set       a replica's Engine.IO sessions: a misrouted poll says where
    takeover:<id>      string    the one survivor that ends a dead replica's replies
    control            channel   commands to every replica (`wire.command`)

Theory of operation:

* Writing never blocks: `task_started`, `session_opened`, `broadcast`, …
  queue a command for the `Sender` (bounded, pipelined, retried while Redis
  cannot be reached; a command Redis refuses is logged and dropped).
* Every second a heartbeat renews `replica:<id>`, writes this replica's
  presence when it changed and reads everyone's (`remote_seats` is that
  read, filtered to live replicas).  After every (re)connection the beat and
  this replica's presence, tasks, sessions and held messages are written
  again first: a Redis that restarted empty learns what runs here before
  any survivor could take it for dead.
* Commands are handled off the listener: each `on_control` (a reply's
  cancellation, which awaits its task) runs in a bounded set of tasks, so a
  slow one delays nothing else; a malformed command is counted and skipped.
* One reply at a time into a message, across replicas: `claims.py`.  A
  replica's held messages are written again after a reconnect, and let go
  when it closes, or when it died and a survivor has ended its replies.
* A replica that stops beating is dead 3 s after its beat expired (5 s).
  The janitor (every 2 s, its own task) of whichever survivor wins
  `takeover:<id>` ends its replies through `on_orphan` (stored with their
  last draft and a note, `ReplyFailed` to their rooms), then removes its
  presence, sessions and held messages, so nothing it leaves behind
  outlives it.  A reply
  whose `on_orphan` fails stays listed; another survivor retries once the
  takeover expires (60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any, cast

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.bus import OnControl, OnOrphan, Seat, TaskInfo, Unreachable, wire
from gateway.bus.claims import Claims
from gateway.bus.link import Background, Complaints, Listener, Sender, client

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
REPLICA_TTL_S = 5
JANITOR_S = 2.0
MISSING_GRACE_S = 3.0
TAKEOVER_TTL_S = 60
START_TIMEOUT_S = 2.0
CONTROL_HANDLERS = 64


# -- what the hashes hold -------------------------------------------------------------------
#
#     tasks     <task id> → {"chat_id": …, "message_id": …, "user_id": …,
#                            "rooms": ["user:u1", …], "replica": "<replica id>"}
#     presence  <replica id> → [[kind, user id, session or null], …]
#
# Entries another replica wrote are checked like messages: a bad one is skipped.
def task_entry(task: TaskInfo, replica: str) -> str:
    shaped = {
        "chat_id": task.chat_id,
        "message_id": task.message_id,
        "user_id": task.user_id,
        "rooms": list(task.rooms),
        "replica": replica,
    }
    return json.dumps(shaped)


def task_of(task_id: str, entry: str) -> TaskInfo:
    shaped = wire.loads(entry)
    if not isinstance(shaped, dict):
        raise wire.Malformed("a task that is not an object")
    texts = [shaped.get(key) for key in ("chat_id", "message_id", "user_id", "replica")]
    rooms = shaped.get("rooms")
    if not all(isinstance(text, str) for text in texts) or not wire.strings(rooms):
        raise wire.Malformed(f"task {task_id} with fields of the wrong type")
    chat_id, message_id, user_id, replica = cast(list[str], texts)
    return TaskInfo(task_id, chat_id, message_id, user_id, tuple(rooms), replica)


def seats_entry(seats: list[Seat]) -> str:
    return json.dumps([[seat.kind, seat.user_id, seat.session] for seat in seats])


def seats_of(entry: str) -> list[Seat]:
    shaped = wire.loads(entry)
    if not isinstance(shaped, list):
        raise wire.Malformed("presence that is not a list")
    seats = []
    for seat in shaped:
        if not (
            isinstance(seat, list)
            and len(seat) == 3
            and isinstance(seat[0], str)
            and isinstance(seat[1], str)
            and isinstance(seat[2], str | None)
        ):
            raise wire.Malformed("a seat of the wrong shape")
        seats.append(Seat(seat[0], seat[1], seat[2]))
    return seats


class RedisReplicas:
    def __init__(self, url: str, prefix: str = "gw:", max_pending: int = 10_000) -> None:
        self.replica_id = uuid.uuid4().hex[:12]
        self._url = url
        self._prefix = prefix
        self._redis = client(url)
        self._listener = Listener(url, self, "replicas")
        self._sender = Sender(self._redis, max_pending)
        self._handlers = Background("control", CONTROL_HANDLERS)
        self._bad_entries = Complaints("bus skipped malformed registry entries")
        self.malformed_entries = 0
        self._seats: list[Seat] = []
        self._presence_dirty = True
        self._remote_seats: dict[str, list[Seat]] = {}
        self._local_tasks: dict[str, str] = {}  # task id → its registry entry
        # One reply at a time into a message, across replicas (`claims.py`).
        self._claims = Claims(
            self._redis,
            self._sender,
            self._key("answering"),
            self.replica_id,
            lambda: self._listener.listening,
        )
        self._sessions: set[str] = set()
        self._missing_since: dict[str, float] = {}  # replica → when its beat was first missed
        self._tasks: list[asyncio.Task[None]] = []
        self._on_control: OnControl | None = None
        self._on_orphan: OnOrphan | None = None

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    @property
    def malformed(self) -> int:
        """Commands skipped as malformed (on the control channel)."""
        return self._listener.malformed

    # -- life --------------------------------------------------------------------------
    async def start(self, on_control: OnControl, on_orphan: OnOrphan) -> None:
        self._on_control, self._on_orphan = on_control, on_orphan
        for loop in (self._listener.run, self._sender.run, self._heartbeat, self._janitor):
            self._tasks.append(asyncio.create_task(loop(), name=f"replicas-{loop.__name__}"))
        # Registered and hearing commands (briefly: with Redis down, start anyway).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listener.until_listening(), START_TIMEOUT_S)

    async def close(self) -> None:
        # What is queued (the last replies' removal from `tasks`) goes first.
        if self._listener.listening:
            await self._sender.drained(START_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._handlers.close()
        with contextlib.suppress(RedisError, OSError):
            # One transaction: whatever it still held (a let-go that did not go out)
            # let go with its presence, through which a janitor would know of it.
            pipe = self._redis.pipeline(transaction=True)
            self._claims.forget(pipe, self.replica_id)
            pipe.delete(self._key(f"replica:{self.replica_id}"))
            pipe.delete(self._key(f"sessions:{self.replica_id}"))
            pipe.hdel(self._key("presence"), self.replica_id)
            await pipe.execute()
        await self._redis.aclose()
        await self._listener.close()

    def problem(self) -> str | None:
        if not self._listener.listening:
            return f"Redis at {self._url} is unreachable: {self._listener.last_error}"
        return None

    # -- who is alive ----------------------------------------------------------------------
    async def live(self) -> set[str]:
        """Every replica beating now, this one included."""
        beat = self._key("replica:")
        return {key.removeprefix(beat) async for key in self._redis.scan_iter(match=beat + "*")}

    async def alive(self, replicas: Iterable[str]) -> set[str]:
        replicas = list(dict.fromkeys(replicas))
        if not replicas:
            return set()
        values = await self._redis.mget([self._key(f"replica:{r}") for r in replicas])
        return {replica for replica, value in zip(replicas, values, strict=True) if value}

    # -- the listener's connection (link.Handler) --------------------------------------------
    async def connected(self, pubsub: PubSub) -> None:
        """After (re)connecting: a Redis that restarted empty learns again what runs
        here.  The heartbeat goes first, so no survivor takes these tasks for orphans."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key(f"replica:{self.replica_id}"), int(time.time()), ex=REPLICA_TTL_S)
        # Its presence too: how a janitor knows of it, should it die before its next
        # beat, with nothing of it listed in `tasks`.
        pipe.hset(self._key("presence"), self.replica_id, seats_entry(self._seats))
        for task_id, entry in self._local_tasks.items():
            pipe.hset(self._key("tasks"), task_id, entry)
        self._claims.rewrite(pipe)
        if self._sessions:
            pipe.sadd(self._key(f"sessions:{self.replica_id}"), *self._sessions)
        await pipe.execute()
        self._presence_dirty = True
        await pubsub.subscribe(self._key("control"))

    def subscribed(self, channel: str) -> None:
        return None

    def received(self, channel: str, data: str) -> None:
        message = wire.command_of(data)
        if message["from"] != self.replica_id and self._on_control is not None:
            self._handlers.spawn(self._on_control(message))

    def lost(self) -> None:
        self._presence_dirty = True

    # -- commands ------------------------------------------------------------------------
    def broadcast(self, message: dict[str, Any]) -> None:
        self._sender.command(
            "publish", self._key("control"), wire.command(self.replica_id, message)
        )

    # -- running replies -----------------------------------------------------------------
    def task_started(self, task: TaskInfo) -> None:
        entry = self._local_tasks[task.task_id] = task_entry(task, self.replica_id)
        self._sender.command("hset", self._key("tasks"), task.task_id, entry)

    def task_ended(self, task_id: str) -> None:
        self._local_tasks.pop(task_id, None)
        self._sender.command("hdel", self._key("tasks"), task_id)

    async def claim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> str | None:
        return await self._claims.claim(chat_id, message_ids, user_id)

    def unclaim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        self._claims.unclaim(chat_id, message_ids, user_id)

    async def _all_tasks(self) -> list[TaskInfo]:
        raw = cast(dict[str, str], await self._redis.hgetall(self._key("tasks")))
        tasks = []
        for task_id, entry in raw.items():
            try:
                tasks.append(task_of(task_id, entry))
            except wire.Malformed as exc:
                self._skipped("tasks", exc)
        return tasks

    def _skipped(self, key: str, exc: wire.Malformed) -> None:
        self.malformed_entries += 1
        self._bad_entries.note(key=key, error=str(exc)[:200])

    async def remote_tasks(self, *, strict: bool = False) -> list[TaskInfo]:
        try:
            tasks = [task for task in await self._all_tasks() if task.replica != self.replica_id]
            alive = await self.alive(task.replica for task in tasks)
        except RedisError as exc:
            if strict:
                raise Unreachable(str(exc) or type(exc).__name__) from None
            return []
        return [task for task in tasks if task.replica in alive]

    async def claimed_elsewhere(self) -> set[tuple[str, str]]:
        try:
            held = await self._claims.held()
            others = {replica for replica in held.values() if replica != self.replica_id}
            alive = await self.alive(others)
        except RedisError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        return {key for key, replica in held.items() if replica in alive}

    # -- Engine.IO sessions ------------------------------------------------------------------
    def session_opened(self, sid: str) -> None:
        self._sessions.add(sid)
        self._sender.command("sadd", self._key(f"sessions:{self.replica_id}"), sid)

    def session_closed(self, sid: str) -> None:
        self._sessions.discard(sid)
        self._sender.command("srem", self._key(f"sessions:{self.replica_id}"), sid)

    async def _present(self) -> list[str]:
        return [str(replica) for replica in await self._redis.hkeys(self._key("presence"))]

    async def session_replica(self, sid: str) -> str | None:
        try:
            others = [r for r in await self._present() if r != self.replica_id]
            alive = sorted(await self.alive(others))
            pipe = self._redis.pipeline(transaction=False)
            for replica in alive:
                pipe.sismember(self._key(f"sessions:{replica}"), sid)
            held = await pipe.execute()
        except RedisError:
            return None
        return next((r for r, has in zip(alive, held, strict=True) if has), None)

    # -- presence ----------------------------------------------------------------------------
    def presence_changed(self, seats: list[Seat]) -> None:
        self._seats = seats
        self._presence_dirty = True

    def remote_seats(self) -> list[Seat]:
        return [seat for seats in self._remote_seats.values() for seat in seats]

    def remote_counts(self) -> dict[str, int]:
        return {replica: len(seats) for replica, seats in self._remote_seats.items()}

    async def _live_seats(self, presence: dict[str, str]) -> dict[str, list[Seat]]:
        others = [replica for replica in presence if replica != self.replica_id]
        alive = await self.alive(others)
        seats: dict[str, list[Seat]] = {}
        for replica in others:
            if replica in alive:
                try:
                    seats[replica] = seats_of(presence[replica])
                except wire.Malformed as exc:
                    self._skipped("presence", exc)
        return seats

    # -- the loops ---------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._beat()
            except RedisError:
                self._presence_dirty = True  # the listener reports the outage
            await asyncio.sleep(HEARTBEAT_S)

    async def _beat(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key(f"replica:{self.replica_id}"), int(time.time()), ex=REPLICA_TTL_S)
        if self._presence_dirty:
            # Cleared before the round trip: a change meanwhile is written next beat.
            self._presence_dirty = False
            pipe.hset(self._key("presence"), self.replica_id, seats_entry(self._seats))
        pipe.hgetall(self._key("presence"))
        results = await pipe.execute()
        self._remote_seats = await self._live_seats(results[-1])

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
        alive = await self.alive(known)
        now = time.monotonic()
        missing = known - alive
        self._missing_since = {r: self._missing_since.get(r, now) for r in missing}
        # Dead: its beat expired and stayed missing a while (a live replica whose
        # Redis restarted empty beats again within a second of reconnecting).
        for replica in [r for r in missing if now - self._missing_since[r] >= MISSING_GRACE_S]:
            key = self._key(f"takeover:{replica}")
            if await self._redis.set(key, self.replica_id, nx=True, ex=TAKEOVER_TTL_S):
                await self._end(replica, [task for task in tasks if task.replica == replica])

    async def _end(self, replica: str, orphans: list[TaskInfo]) -> None:
        """What a dead replica left: its replies ended, then (all of them ended) its held
        messages let go, its presence and sessions gone."""
        log.warning(
            "replica stopped beating; ending its replies",
            extra={"replica": replica, "replies": len(orphans)},
        )
        ended = True
        for task in orphans:
            try:
                if self._on_orphan is not None:
                    await self._on_orphan(task)
            except RedisError:
                raise
            except Exception:  # this reply stays listed: retried after the takeover expires
                log.exception("could not end a dead replica's reply", extra={"task": task.task_id})
                ended = False
                continue
            await self._redis.hdel(self._key("tasks"), task.task_id)
        if ended:
            # Its messages free once its replies are ended (a new reply's row must
            # not get the dead one's end), and before its presence goes, which is
            # how a janitor knows of it while nothing of it is listed in `tasks`.
            pipe = self._redis.pipeline(transaction=False)
            self._claims.forget(pipe, replica)
            await pipe.execute()
        await self._redis.hdel(self._key("presence"), replica)
        await self._redis.delete(self._key(f"sessions:{replica}"))
