"""Pure-Python work too long for the event loop: a long chat's rows made records,
its tree walked, its turn planned (`chat/chats.py` `tree_work`,
`store/sql/messages.py` `records_of`).  Run in one thread of its own, one piece
after another.

One thread, not the loop's default executor: there, aiohttp resolves model
servers' host names, and several long chats at once would be several threads
of pure Python, each taking the interpreter from the loop in turn (it gets it
back every `sys.getswitchinterval()`, 5 ms, from one thread; from K, after up
to K × 5 ms).  With the GIL, more threads would not finish the work sooner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-offloop")


async def run(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in the off-loop thread, after what was handed to it before."""
    return await asyncio.get_running_loop().run_in_executor(_THREAD, work, *args)


async def run_if(heavy: bool, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)`: in the off-loop thread when `heavy` (past its caller's bound),
    else at once on the loop, where a small piece costs less than the hop."""
    if heavy:
        return await run(work, *args)
    return work(*args)
