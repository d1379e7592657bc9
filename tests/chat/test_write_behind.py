"""A stored turn's write begins behind its replies' requests (`service._behind_the_replies`):
the task of a reply, made just after the write's, takes its first step first, and a
write cancelled before it began is closed, never left un-awaited."""

from __future__ import annotations

import asyncio
import gc
import warnings

from gateway.chat.service import _behind_the_replies


async def test_a_task_made_after_the_write_runs_its_first_step_first() -> None:
    steps: list[str] = []

    async def write() -> None:
        steps.append("write began")
        await asyncio.sleep(0)
        steps.append("write done")

    async def reply() -> None:
        steps.append("request sent")
        await asyncio.sleep(0.01)
        steps.append("first event")

    written = asyncio.ensure_future(_behind_the_replies(write()))
    replying = asyncio.ensure_future(reply())
    await asyncio.shield(written)
    await replying
    assert steps == ["request sent", "write began", "write done", "first event"]


async def test_a_write_cancelled_before_it_began_is_closed() -> None:
    began: list[str] = []

    async def write() -> None:
        began.append("write")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = asyncio.ensure_future(_behind_the_replies(write()))
        await asyncio.sleep(0)  # its first step: waiting a loop turn
        written.cancel()
        await asyncio.gather(written, return_exceptions=True)
        gc.collect()
    assert written.cancelled() and began == []
    assert not [w for w in caught if "never awaited" in str(w.message)], caught
