"""Replies in progress: the registry of this replica's, stop anywhere, recovery.

Every running reply is a `Running` here, with the task that generates it, and
a `TaskInfo` in the replica registry so other replicas can list and stop it.  A stop names
its replies with a `StopTarget`: this replica's are cancelled at once, the
others' get a control message.  Replies nobody will finish (a crash, a replica
that died) are stored with their last draft and a note.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.bus import Replicas, TaskInfo, Unreachable
from gateway.bus.link import BACKOFF_MAX_S
from gateway.bus.memory import LocalReplicas
from gateway.bus.replicas import HEARTBEAT_S, REPLICA_TTL_S
from gateway.errors import Conflict, DatabaseDown
from gateway.events import ReplyFailed
from gateway.fanout.hub import Hub
from gateway.store import ChatStore
from gateway.store.records import MessageRecord

log = logging.getLogger(__name__)

CRASH_NOTE = (
    "The gateway stopped before this reply finished; the text up to the last checkpoint is kept."
)
REPLICA_LOST_NOTE = (
    "The gateway replica running this reply stopped; the text up to the last checkpoint is kept."
)
# The longest a stop waits for its reply's end before it is answered.
STOP_WAIT_S = 5.0
# How far past the shared buffer's last event a survivor numbers a dead replica's
# reply's end: more than that replica could send between two buffer flushes.
LOST_END_SEQ_GAP = 100_000


@dataclass(slots=True)
class Running:
    """A reply in progress, for stop requests and task lists (Open WebUI's "tasks")."""

    task_id: str
    chat_id: str
    message_id: str
    user_id: str
    rooms: list[str]
    task: asyncio.Task[None] | None = None
    cancelled_by_user: bool = False


class RunningReplies:
    def __init__(self, store: ChatStore, hub: Hub, replicas: Replicas | None = None) -> None:
        self.store = store
        self.hub = hub
        # Tasks, commands, orphans and held messages across replicas
        # (`gateway/bus/replicas.py`, `claims.py`).
        self.replicas: Replicas = replicas if replicas is not None else LocalReplicas()
        # task id → reply; task ids are ours, message ids are the clients'.
        self.running: dict[str, Running] = {}
        # (chat id, message id) of every reply being started or running here: one
        # reply at a time into a message (`claim`).
        self._answering: set[tuple[str, str]] = set()
        # (user id, message id) → the chat of each of those replies: a user's running
        # replies are found by message id alone (the replay buffer, a resume, the
        # stream route), so one id runs in one chat of a user at a time (`claim`).
        self._chat_of: dict[tuple[str, str], str] = {}
        # `recover_unfinished` tried again while the registry cannot be reached.
        self._recovering: asyncio.Task[None] | None = None
        # Shutting down (past the grace): `ReplyRunner._stored_end` stops retrying.
        self.stopping = False

    async def claim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        """Hold messages for the replies about to be started into them, until each
        has `ended` (or is `release`d unstarted).  A reply into one of them already
        being started or running, here or on another replica (`Replicas.claim`), is
        a `Conflict` (409), and nothing is held: two replies into one row would each
        write it, and the one that ended last would overwrite the other's answer.
        So is one whose id the user's reply in another chat runs under, here or on
        another replica: their events would be one reply's to every follower of
        either."""
        keys = [(chat_id, message_id) for message_id in message_ids]
        for key in keys:
            if key in self._answering:
                raise _conflict(key[1])
            if self._chat_of.get((user_id, key[1]), chat_id) != chat_id:
                raise _conflict(key[1], " in another of your chats")
        self._answering.update(keys)
        self._chat_of.update(((user_id, message_id), chat_id) for message_id in message_ids)
        try:
            elsewhere = await self.replicas.claim(chat_id, message_ids, user_id)
        except BaseException:
            self.release(chat_id, message_ids, user_id)
            raise
        if elsewhere is not None:
            self._answering.difference_update(keys)
            self._forget(user_id, message_ids)
            raise _conflict(elsewhere, " on another replica")

    def release(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        """Let go of messages `claim`ed for replies that will not run."""
        for message_id in message_ids:
            self._answering.discard((chat_id, message_id))
        self._forget(user_id, message_ids)
        self.replicas.unclaim(chat_id, message_ids, user_id)

    def _forget(self, user_id: str, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self._chat_of.pop((user_id, message_id), None)

    def start(self, running: Running, generating: Coroutine[Any, Any, None]) -> None:
        """Register `running` here and in the registry, and run `generating` (which calls
        `ended` when it is over)."""
        self.running[running.task_id] = running
        self.replicas.task_started(self._info(running))
        running.task = asyncio.create_task(generating)
        running.task.add_done_callback(_failed)

    def ended(self, running: Running) -> None:
        """A reply is over (its end stored, when it has one): off the registry, and its
        message free to be answered again.  Called once its end is stored, again when
        its task is done: the second call does nothing."""
        if self.running.pop(running.task_id, None) is None:
            return
        key = (running.chat_id, running.message_id)
        if key in self._answering:  # (a temporary chat's replies hold nothing)
            self._answering.discard(key)
            self._forget(running.user_id, [running.message_id])
            self.replicas.unclaim(running.chat_id, [running.message_id], running.user_id)
        self.replicas.task_ended(running.task_id)

    # -- tasks: this replica's and the others' -------------------------------------
    def _info(self, running: Running) -> TaskInfo:
        return TaskInfo(
            running.task_id,
            running.chat_id,
            running.message_id,
            running.user_id,
            tuple(running.rooms),
            self.replicas.replica_id,
        )

    async def tasks(
        self, *, chat_id: str | None = None, user_id: str | None = None
    ) -> list[TaskInfo]:
        """Replies running on any replica (Open WebUI's task list)."""
        local = [self._info(running) for running in self.running.values()]
        return [
            task
            for task in (*local, *await self.replicas.remote_tasks())
            if (chat_id is None or task.chat_id == chat_id)
            and (user_id is None or task.user_id == user_id)
        ]

    def is_generating(self, chat_id: str, message_id: str) -> bool:
        """Whether a stored reply into this message is being started or runs on this
        replica (`claim`: a temporary chat's replies hold nothing)."""
        return (chat_id, message_id) in self._answering

    async def stop(self, target: StopTarget) -> int:
        """Stop the replies `target` names, wherever they run: this replica's now,
        the others' by a control message to them.  The number of replies stopped."""
        local = [r for r in self.running.values() if target.matches(self._info(r))]
        await self.cancel(*local)
        remote = [task for task in await self.replicas.remote_tasks() if target.matches(task)]
        if remote:
            self.replicas.broadcast({"cancel": target.as_dict()})
        return len(local) + len(remote)

    async def on_control(self, message: dict[str, Any]) -> None:
        """A command from another replica (the registry calls this)."""
        spec = message.get("cancel")
        if isinstance(spec, dict):
            target = StopTarget.of(spec)
            await self.cancel(*(r for r in self.running.values() if target.matches(self._info(r))))

    async def cancel(self, *runnings: Running) -> None:
        """Stop replies of this replica's, all at once; returns once their ends are
        stored and sent, or after STOP_WAIT_S: an end whose write waits for a
        database that is away (`ReplyRunner._stored_end`, up to a minute) goes out
        later, on its own."""
        tasks = []
        for running in runnings:
            running.cancelled_by_user = True
            if running.task is not None and not running.task.done():
                tasks.append(running.task)
        if not tasks:
            return
        if any(_unstarted(task) for task in tasks):
            await asyncio.sleep(0)  # their first step is due: one loop turn
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)

    # -- recovery ----------------------------------------------------------------
    async def _recover(self, record: MessageRecord, note: str) -> None:
        """A reply nobody is generating any more: its last draft, done, with a note."""
        record.fields = {**record.fields, "error": {"content": note}}
        record.content = record.draft or record.content
        record.done = True
        record.draft = None
        # Only over a row still unfinished: a reply that ended since it was read (its
        # end written meanwhile) keeps its end.
        await self.store.finish_unfinished(record)

    async def recover_unfinished(self) -> int:
        """Finalise replies a crash left with done=false, unless a live replica runs them.
        While the registry cannot say which run elsewhere (Redis unreachable), none:
        a reply another replica is running would be marked crashed under it; tried
        again until it can say (`_recover_later`)."""
        try:
            return await self._recover_now()
        except Unreachable as exc:
            if self._recovering is None or self._recovering.done():
                log.warning(
                    "replies left unfinished by a crash not finalised yet: which run on "
                    "other replicas is unknown while Redis is unreachable; trying again",
                    extra={"error": str(exc)[:200], "retry_s": RECOVER_RETRY_S},
                )
                self._recovering = asyncio.get_running_loop().create_task(self._recover_later())
            return 0

    async def _recover_now(self, *, again: bool = True) -> int:
        # The rows first, then what runs and what is held elsewhere: a reply started on
        # another replica in between holds its message (`claim`, waited for) before its
        # row is written; its registration among the tasks is queued, and may come later.
        unfinished = await self.store.unfinished_messages()
        remote = await self.replicas.remote_tasks(strict=True)
        running = {(t.chat_id, t.message_id) for t in remote}
        held = await self.replicas.claimed_elsewhere()
        recovered, held_only = 0, 0
        for record in unfinished:
            key = (record.chat_id, record.id)
            if self.is_generating(*key) or key in running:
                continue
            if key in held:
                held_only += 1
                continue
            await self._recover(record, CRASH_NOTE)
            recovered += 1
        if recovered:
            log.warning("finalised replies left unfinished by a crash", extra={"count": recovered})
        if held_only and again and (self._recovering is None or self._recovering.done()):
            # Held without a task listed: a reply starting, or one of a replica that
            # died a moment ago (still taken for live), which no survivor ends
            # (`on_orphan` ends listed tasks): looked at again once it would be seen dead.
            self._recovering = asyncio.get_running_loop().create_task(self._look_again())
        return recovered

    async def _look_again(self) -> None:
        await asyncio.sleep(LOOK_AGAIN_S)
        try:
            await self._recover_now(again=False)
        except Unreachable:
            await self._recover_later()
        except Exception:
            log.warning("finalising replies left unfinished failed", exc_info=True)

    async def _recover_later(self) -> None:
        """`_recover_now` once Redis has answered for REJOIN_S on end: a Redis that
        restarted empty lists a live replica's replies again only once that replica
        has reconnected (its backoff) and written them back."""
        answering_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RECOVER_RETRY_S)
            try:
                await self.replicas.remote_tasks(strict=True)
                if answering_since is None:
                    answering_since = loop.time()
                if loop.time() - answering_since < REJOIN_S:
                    continue
                log.info("Redis answers again: finalising the replies no replica runs")
                await self._recover_now()
            except Unreachable:
                answering_since = None
                continue
            except DatabaseDown:
                log.warning("finalising replies left unfinished: the database is unavailable")
                continue
            except Exception:
                log.warning("finalising replies left unfinished failed", exc_info=True)
                continue
            self._recovering = None
            return

    async def on_orphan(self, task: TaskInfo) -> None:
        """A reply whose replica died (the registry calls this on one survivor): stored with
        its last draft, and its clients get a clean error end."""
        record = await self.store.get_message(task.chat_id, task.message_id)
        partial = ""
        if record is not None and record.done is False:
            partial = record.draft or record.content
            await self._recover(record, REPLICA_LOST_NOTE)
        elif record is not None:
            partial = record.content
        # Numbered well past anything the dead replica may have sent (its last
        # events may never have reached the shared buffer), so no client that
        # saw them takes the end for one it has.
        kept = await self.hub.journal.read(task.user_id, task.message_id)
        seq = (kept.last_seq if kept is not None else 0) + LOST_END_SEQ_GAP
        failed = ReplyFailed(
            task.chat_id, task.message_id, seq, "replica_lost", REPLICA_LOST_NOTE, partial
        )
        self.hub.reply_event(task.user_id, list(task.rooms), failed)

    async def stored_content(self, chat_id: str, message_id: str) -> str | None:
        """A stored reply's text (for events too big to carry between replicas)."""
        record = await self.store.get_message(chat_id, message_id)
        return None if record is None else record.content

    async def shutdown(self) -> None:
        self.stopping = True  # a reply's end no longer waits for a database that is away
        if self._recovering is not None:
            self._recovering.cancel()
        # Every reply past its first step before any is cancelled, with no await
        # between the last look and the cancels (a reply may start meanwhile).
        for _ in range(SHUTDOWN_STEP_TURNS):
            if not any(r.task is not None and _unstarted(r.task) for r in self.running.values()):
                break
            await asyncio.sleep(0)
        for running in list(self.running.values()):
            if running.task is not None:
                running.task.cancel()
        tasks = [r.task for r in self.running.values() if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


# How often `recover_unfinished` is tried again while Redis is unreachable, and how
# long Redis must have answered before it is: every live replica reconnected (its
# backoff) and its running replies written back (its first round trip).
RECOVER_RETRY_S = 2.0
REJOIN_S = BACKOFF_MAX_S + 2 * HEARTBEAT_S
# When a recovery looks again at the messages held elsewhere without a task listed:
# a replica that died holding them is no live replica's by then (its heartbeat gone).
LOOK_AGAIN_S = REPLICA_TTL_S + 2 * HEARTBEAT_S

# How many loop turns `shutdown` gives replies started meanwhile to take their first step.
SHUTDOWN_STEP_TURNS = 100


def _conflict(message_id: str, where: str = "") -> Conflict:
    return Conflict(
        f"a reply into message '{message_id}' is already running{where}: "
        "stop it or wait for its end, or answer into a new id"
    )


def _failed(task: asyncio.Task[None]) -> None:
    """A reply's task that failed past its own handling (it handles all but a
    cancel): logged, whether or not anyone waits for it (a stop waits a while)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a reply's task failed", exc_info=task.exception())


def _unstarted(task: asyncio.Task[None]) -> bool:
    """Whether a reply's task has yet to take its first step (due in the next loop
    turn).  Cancelled before it, its coroutine would never run at all: not its stop
    path (the end stored and published), nor the `finally` that gives its slot back
    and takes it off the registry (`runner.py`)."""
    coro = task.get_coro()
    return isinstance(coro, Coroutine) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED


@dataclass(frozen=True, slots=True)
class StopTarget:
    """Which replies a stop names: those of `user_id` (None: anyone's, for admins)
    in a chat, one task, or every reply published to a room (a Nadoo session)."""

    user_id: str | None
    chat_id: str | None = None
    task_id: str | None = None
    room: str | None = None

    def matches(self, task: TaskInfo) -> bool:
        return (
            (self.user_id is None or task.user_id == self.user_id)
            and (self.chat_id is None or task.chat_id == self.chat_id)
            and (self.task_id is None or task.task_id == self.task_id)
            and (self.room is None or self.room in task.rooms)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "chat_id": self.chat_id,
            "task_id": self.task_id,
            "room": self.room,
        }

    @classmethod
    def of(cls, spec: dict[str, Any]) -> StopTarget:
        def text(key: str) -> str | None:
            value = spec.get(key)
            return value if isinstance(value, str) else None

        return cls(text("user_id"), text("chat_id"), text("task_id"), text("room"))
