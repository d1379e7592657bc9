"""Live reply traces: what happened to one reply, step by step, for whoever debugs it.

A trace is kept per stored reply, by its user and message id (message ids are
the clients': another user's reply under the same id is another trace), in the
replica that runs it (Nadoo's plugin-debug socket, `/api/v1/ws/plugin/debug/{execution_id}`,
and `gateway trace` read it).  Its records are Nadoo's debug frames::

    {"type": "execution_info",     "data": {execution_id, chat_id, status, model, …}}
    {"type": "step",               "data": {"step": "upstream_request" | "first_token"
                                             | "checkpoint" | "finish", "t_ms", …}}
    {"type": "api_call",           "data": {"url", "method", "status", "ms"}}
    {"type": "log",                "data": {"level", "message", "t_ms"}}
    {"type": "execution_complete", "data": {"result": {status, chars, duration_ms, usage}}}
    {"type": "execution_error",    "data": {"error", "code", "t_ms"}}

Theory of operation:

* The runner begins a trace when a reply starts and sets it as the reply
  task's current trace (a context variable), so the model server's client
  (`upstream/openai.py`) adds its `api_call` without being handed anything.
* A socket that opens gets the records so far (Nadoo's `debug_data`: the
  history, in order), then each new one as it is added.  A subscriber's queue
  is bounded; one that falls behind is dropped, not waited for.
* Nothing in a record is a secret or message text: URLs lose their user info
  and query, and a reply is described by its length, not its words.
* Bounded: `MAX_RECORDS` per trace (checkpoints are the ones that repeat: the
  oldest go first), `max_traces` traces, each kept `keep_s` after its end; past
  `max_traces` the oldest ended trace goes first, and a running one (its
  listeners ended) only when every trace is running.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MAX_RECORDS = 256
MAX_QUEUED = 256
SWEEP_EVERY_S = 1.0


def safe_url(url: str) -> str:
    """A URL without its user info, query or fragment (where secrets hide)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Trace:
    def __init__(self, message_id: str, user_id: str) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.started = time.monotonic()
        self.ended_at: float | None = None
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self._listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)

    def add(self, kind: str, **data: Any) -> None:
        record = {"type": kind, "data": {**data, "t_ms": self.ms()}}
        self.records.append(record)
        for queue in list(self._listeners):
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                self._drop(queue)

    def step(self, step: str, **data: Any) -> None:
        self.add("step", step=step, **data)

    def log(self, level: str, message: str) -> None:
        self.add("log", level=level, message=message)

    def end(self) -> None:
        self.ended_at = time.monotonic()
        for queue in list(self._listeners):
            self._drop(queue)

    def listen(self) -> tuple[list[dict[str, Any]], asyncio.Queue[dict[str, Any] | None]]:
        """(the records so far, a queue of those that follow; None after the last)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_QUEUED + 1)
        if self.ended_at is None:
            self._listeners.add(queue)
        else:
            queue.put_nowait(None)
        return list(self.records), queue

    def unlisten(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._listeners.discard(queue)

    def _drop(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._listeners.discard(queue)
        while queue.full():
            queue.get_nowait()
        queue.put_nowait(None)


_CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "gateway_trace", default=None
)


def current() -> Trace | None:
    """The trace of the reply whose task is running, if any."""
    return _CURRENT.get()


class Traces:
    """The traces of this replica's replies, by (user id, message id)."""

    def __init__(self, max_traces: int = 1000, keep_s: float = 60.0) -> None:
        self._traces: OrderedDict[tuple[str, str], Trace] = OrderedDict()
        self._max = max_traces
        self._keep_s = keep_s
        self._next_sweep = 0.0

    def begin(self, message_id: str, user_id: str) -> Trace:
        """A new trace, current in the calling task from now on."""
        self._expire()
        trace = Trace(message_id, user_id)
        key = (user_id, message_id)
        self._traces.pop(key, None)
        self._traces[key] = trace
        while len(self._traces) > self._max:
            self._evict()
        _CURRENT.set(trace)
        return trace

    def _evict(self) -> None:
        """The oldest ended trace dropped; only when every trace is running, the oldest
        (its listeners ended)."""
        for key, trace in self._traces.items():
            if trace.ended_at is not None:
                del self._traces[key]
                return
        _, oldest = self._traces.popitem(last=False)
        oldest.end()

    def get(self, message_id: str, user_id: str | None = None) -> Trace | None:
        """`user_id`'s trace of the reply; with no user, the newest of any user's (an
        admin's view)."""
        self._expire()
        if user_id is not None:
            return self._traces.get((user_id, message_id))
        found = None
        for (_, traced), trace in self._traces.items():  # in the order they began
            if traced == message_id:
                found = trace
        return found

    def _expire(self) -> None:
        """Traces ended longer than `keep_s` ago dropped.  The sweep runs at most once
        a second, not at every reply's start, and reads only the traces begun more
        than `keep_s` ago: they are held in the order they began, and one begun
        since cannot have ended that long ago, so it stops at the first of those (a
        busy replica's thousand recent traces cost it nothing)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        horizon = now - self._keep_s
        expired = []
        for key, trace in self._traces.items():
            if trace.started > horizon:
                break
            if trace.ended_at is not None and trace.ended_at < horizon:
                expired.append(key)
        for key in expired:
            del self._traces[key]
