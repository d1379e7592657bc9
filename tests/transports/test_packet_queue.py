"""`PacketQueue`, Engine.IO's per-socket queue in the gateway: asyncio.Queue's
behaviour for the methods Engine.IO calls, checked against asyncio.Queue itself
on random sequences of operations (hypothesis), and what only a waiting consumer
shows (a wake-up, a cancelled get, join); a real Engine.IO server makes it for
every socket."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transports.socketio_guard import GuardedServer
from gateway.transports.socketio_queue import PacketQueue

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 99)),
        st.tuples(st.just("get_nowait"), st.none()),
        st.tuples(st.just("task_done"), st.none()),
        st.tuples(st.just("get"), st.none()),
    ),
    max_size=60,
)


def apply(loop: asyncio.AbstractEventLoop, queue: Any, op: str, value: Any) -> Any:
    """One operation on a queue: its result, or the exception's type."""

    async def step() -> Any:
        if op == "put":
            await queue.put(value)
            return None
        if op == "get_nowait":
            return queue.get_nowait()
        if op == "task_done":
            return queue.task_done()
        # A get that would wait gives up at once (a poll that timed out).
        return await asyncio.wait_for(queue.get(), 0.001)

    try:
        return loop.run_until_complete(step())
    except (asyncio.QueueEmpty, ValueError, TimeoutError) as exc:
        return type(exc)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_it_behaves_as_asyncio_queue_on_any_sequence(ops: list[tuple[str, Any]]) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        ours, theirs = PacketQueue(), asyncio.Queue()  # type: ignore[var-annotated]
        for op, value in ops:
            assert apply(loop, ours, op, value) == apply(loop, theirs, op, value), (op, value)
            assert (ours.qsize(), ours.empty()) == (theirs.qsize(), theirs.empty())
        # join returns at once exactly when asyncio's would (every item done).
        joined = [loop.run_until_complete(_joins_at_once(queue)) for queue in (ours, theirs)]
        assert joined[0] == joined[1]
    finally:
        loop.close()
        asyncio.set_event_loop(None)


async def _joins_at_once(queue: Any) -> bool:
    try:
        await asyncio.wait_for(queue.join(), 0.001)
    except TimeoutError:
        return False
    return True


async def test_a_waiting_get_is_woken_by_a_put_and_items_come_in_order() -> None:
    queue = PacketQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await getter == "a"
    assert queue.get_nowait() == "b" and queue.empty()


async def test_two_waiting_gets_are_served_in_turn() -> None:
    queue = PacketQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(1)
    await asyncio.sleep(0)
    assert first.done() and await first == 1 and not second.done()
    queue.put_nowait(2)
    assert await second == 2


async def test_a_get_cancelled_as_it_is_woken_leaves_the_item_to_the_next() -> None:
    queue = PacketQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")
    first.cancel()  # woken, then cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "only"


async def test_a_timed_out_get_takes_nothing() -> None:
    queue = PacketQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait("later")
    assert queue.get_nowait() == "later"


async def test_join_waits_for_every_task_done() -> None:
    queue = PacketQueue()
    await asyncio.wait_for(queue.join(), 1)  # nothing put: at once
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()


def test_an_idle_queue_is_a_tenth_of_asyncio_queue() -> None:
    async def made(kind: Any) -> list[Any]:
        return [kind() for _ in range(1000)]

    sizes = []
    for kind in (PacketQueue, asyncio.Queue):
        tracemalloc.start()
        queues = asyncio.run(made(kind))
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        sizes.append(size / len(queues))
        del queues
    ours, theirs = sizes
    assert ours * 10 <= theirs, sizes
    assert sys.getsizeof(PacketQueue()) < 100


def test_the_engine_io_server_makes_one_for_each_socket() -> None:
    # Engine.IO's socket takes its queue from its server's `create_queue`.
    server = GuardedServer(async_mode="aiohttp")
    assert isinstance(server.eio.create_queue(), PacketQueue)


PACKETS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.one_of(st.text(max_size=20), st.binary(max_size=20), st.just('2["e",{}]')),
        ),
        st.tuples(st.just("put"), st.none()),  # a session's end
        st.tuples(st.just("get"), st.none()),
    ),
    max_size=60,
)


@given(PACKETS)
@settings(max_examples=200, deadline=None)
def test_the_answers_held_are_counted_but_the_events(ops: list[tuple[str, Any]]) -> None:
    import engineio

    queue, held = PacketQueue(), []
    for op, data in ops:
        if op == "put":
            item = None if data is None else engineio.packet.Packet(engineio.packet.MESSAGE, data)
            queue.put_nowait(item)
            held.append(item)
        elif held:
            assert queue.get_nowait() is held.pop(0)
        answers = [p.data for p in held if p is not None and not str(p.data).startswith("2")]
        assert queue.answer_chars == sum(map(len, answers))
