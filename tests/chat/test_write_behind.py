"""A stored turn's write begins behind its replies' requests (`starter._behind_the_replies`):
a reply's task made just after the write's sends its request first, even when the
request's bytes are written by a task of their own (aiohttp on Python 3.11), and a
write cancelled before it began is never begun, nor left un-awaited; and a reply
that fails inside the gateway before its turn is written ends only once the write
is done (nothing of it at all when the write fails); one stopped before its task's
first step, or while its failure waits for the write, or one started while the
gateway shuts down, still ends through its own stop path (its end published, its
slot given back)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import pytest

from gateway.chat.runner import ReplyRunner
from gateway.chat.running import Running, RunningReplies
from gateway.chat.slots import ReplySlots
from gateway.chat.starter import _behind_the_replies
from gateway.events import Event, ReplyFailed, ReplyFinished
from gateway.fanout.presence import Presence


async def test_a_reply_made_after_the_write_sends_its_request_first() -> None:
    steps: list[str] = []

    async def write() -> None:
        steps.append("write began")
        await asyncio.sleep(0)
        steps.append("write done")

    async def send_body() -> None:
        steps.append("request sent")

    async def reply() -> None:
        # As aiohttp's ClientRequest.send before Python 3.12: the bytes go in a task.
        sending = asyncio.ensure_future(send_body())
        steps.append("request built")
        await sending
        await asyncio.sleep(0.01)
        steps.append("first event")

    written = asyncio.ensure_future(_behind_the_replies(write))
    replying = asyncio.ensure_future(reply())
    await asyncio.shield(written)
    await replying
    assert steps == ["request built", "request sent", "write began", "write done", "first event"]


@pytest.mark.parametrize("steps_first", [0, 1])
async def test_a_write_cancelled_before_it_began_is_never_begun(steps_first: int) -> None:
    began: list[str] = []

    async def write() -> None:
        began.append("write")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = asyncio.ensure_future(_behind_the_replies(write))
        for _ in range(steps_first):
            await asyncio.sleep(0)  # its first step: waiting a loop turn
        written.cancel()
        await asyncio.gather(written, return_exceptions=True)
        gc.collect()
    assert written.cancelled() and began == []
    assert not [w for w in caught if "never awaited" in str(w.message)], caught


# -- a reply that fails inside the gateway before its turn is written ----------------
class RecordingHub:
    """What a running reply publishes, in order; the bus does nothing."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.bus = Quiet()

    def reply_event(self, user_id: str, rooms: Sequence[str], event: Event) -> None:
        self.published.append(event)


class Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Replies:
    """A runner and its registry, in process, publishing to a `RecordingHub`; no store
    (the replies are unstored), `per_user` reply slots."""

    def __init__(self, per_user: int | None = None) -> None:
        self.hub = RecordingHub()
        self.registry = RunningReplies(cast(Any, None), cast(Any, self.hub))
        self.slots = ReplySlots(per_user)
        self.runner = ReplyRunner(
            cast(Any, None), cast(Any, self.hub), self.registry, Presence(), 1.0, slots=self.slots
        )


@pytest.mark.parametrize("write_fails", [False, True])
async def test_a_reply_that_fails_before_its_turn_is_written_ends_after_the_write(
    write_fails: bool,
) -> None:
    replies = Replies()
    hub, registry, runner = replies.hub, replies.registry, replies.runner
    running = Running("task-1", "c1", "a1", "alice", ["user:alice"])
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def opening() -> AsyncGenerator[Event, None]:
        raise RuntimeError("a bug before the model server is asked")

    runner.start(running, opening, written=written)
    await asyncio.sleep(0.05)
    assert hub.published == []  # the turn is not written: nothing of its reply goes out
    if write_fails:
        written.set_exception(OSError("the store is gone"))
    else:
        written.set_result(None)
    assert running.task is not None
    await running.task
    if write_fails:
        assert hub.published == []
    else:
        [end] = hub.published
        assert isinstance(end, ReplyFailed) and end.code == "internal_error"
    assert registry.running == {}


@pytest.mark.parametrize("how", ["stop", "shutdown"])
async def test_a_reply_stopped_before_its_first_step_ends_as_any_stopped_reply(how: str) -> None:
    replies = Replies(1)
    hub, registry, slots, runner = replies.hub, replies.registry, replies.slots, replies.runner
    running = Running("task-1", "c1", "a1", "alice", ["user:alice"])

    async def opening() -> AsyncGenerator[Event, None]:
        await asyncio.Event().wait()  # the model server takes its time
        raise AssertionError("never reached")

    slots.take("alice")  # as the turn takes it (`starter.py`)
    runner.start(running, opening)
    # In the loop turn that started it, before its task's first step.
    if how == "stop":
        await registry.cancel(running)
    else:
        await registry.shutdown()
    assert running.task is not None and running.task.done()
    # Its own stop path ran: the end published (stored, were it a stored reply) ...
    [end] = hub.published
    assert isinstance(end, ReplyFinished) and end.message_id == "a1"
    # ... and its slot given back, the registry emptied.
    assert slots.held("alice") == 0 and registry.running == {}
    slots.take("alice")  # the user's one slot is free again


async def test_a_reply_stopped_while_its_failure_waits_for_the_write_ends_as_stopped() -> None:
    replies = Replies(1)
    hub, registry, slots, runner = replies.hub, replies.registry, replies.slots, replies.runner
    running = Running("task-1", "c1", "a1", "alice", ["user:alice"])
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def opening() -> AsyncGenerator[Event, None]:
        raise RuntimeError("a bug before the model server is asked")

    slots.take("alice")
    runner.start(running, opening, written=written)
    await asyncio.sleep(0.02)  # failed; waiting for its turn's write
    stopping = asyncio.ensure_future(registry.cancel(running))
    await asyncio.sleep(0.02)
    assert hub.published == []  # still nothing before the write
    written.set_result(None)
    await stopping
    [end] = hub.published
    assert isinstance(end, ReplyFinished) and end.message_id == "a1"
    assert slots.held("alice") == 0 and registry.running == {}


async def test_shutdown_lets_a_reply_started_meanwhile_take_its_first_step() -> None:
    replies = Replies(2)
    hub, registry, slots, runner = replies.hub, replies.registry, replies.slots, replies.runner
    first = Running("task-1", "c1", "a1", "alice", ["user:alice"])
    second = Running("task-2", "c1", "a2", "alice", ["user:alice"])

    async def opening() -> AsyncGenerator[Event, None]:
        await asyncio.Event().wait()
        raise AssertionError("never reached")

    slots.take("alice", 2)
    runner.start(first, opening)
    # The second starts in the next loop turn: while shutdown waits for the first.
    asyncio.get_running_loop().call_soon(runner.start, second, opening)
    await registry.shutdown()
    assert sorted(cast(Any, end).message_id for end in hub.published) == ["a1", "a2"]
    assert slots.held("alice") == 0 and registry.running == {}
