"""A stored turn's write begins behind its replies' requests (`service._behind_the_replies`):
a reply's task made just after the write's sends its request first, even when the
request's bytes are written by a task of their own (aiohttp on Python 3.11), and a
write cancelled before it began is never begun, nor left un-awaited."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from gateway.chat.service import _behind_the_replies


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
