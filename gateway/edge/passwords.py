"""Passwords: the length a new one needs, and scrypt run beside the event loop, never on it.

scrypt costs about 35 ms of CPU and 16 MiB by design (`keys.py`); on the event
loop every sign-in would stop every other client for that long.
`hashlib.scrypt` releases the GIL, so a few threads hash while the loop goes
on serving. The pool is small (half the CPUs, 1 to 8: the loop keeps a core)
and its line is short: when `max_waiting` hashes already wait for a thread,
the next one is refused at once (503 with `Retry-After`) instead of queued, so
a flood costs bounded memory and everyone else a bounded wait.

An e-mail without a password (unknown, or a user made from a token) is checked
against a dummy hash made once, so it costs what a known one costs and the
time of the answer tells no one who has an account.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.edge.secrets import check_password, hash_password
from gateway.errors import BadRequest, Unavailable

T = TypeVar("T")

# Threads when GATEWAY_PASSWORD_HASH_THREADS is empty: half the CPUs, at most this
# many (each hash holds 16 MiB; sign-ins are rare next to chat traffic).
MAX_AUTO_THREADS = 8
# What a refused caller is told to wait: a hash takes tens of milliseconds.
BUSY_RETRY_AFTER_S = 1.0


def default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (containers)
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_THREADS, cpus // 2))


class Passwords:
    def __init__(self, min_chars: int, threads: int | None = None, max_waiting: int = 64) -> None:
        self.min_chars = min_chars
        self.threads = threads or default_threads()
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="gateway-password"
        )
        # Hashes running or waiting; taken on the loop, given back by the worker thread.
        self._slots = threading.BoundedSemaphore(self.threads + max_waiting)
        self._dummy: str | None = None

    async def start(self) -> None:
        """Make the dummy hash now, so the first unknown e-mail is not slower than the rest."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def check_new(self, password: str) -> None:
        """Refuse a new password that is too short (characters, as OWASP and NIST count)."""
        if len(password) < self.min_chars:
            raise BadRequest(f"The password must be at least {self.min_chars} characters long.")

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        """Whether `password` is the one `stored` was made from; without a stored
        hash, False after as much work as a real check."""
        if stored is None:
            await self.start()
            assert self._dummy is not None
            await self._run(check_password, password, self._dummy)
            return False
        return await self._run(check_password, password, stored)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        if not self._slots.acquire(blocking=False):
            raise Unavailable(
                "The server is busy checking passwords; try again in a moment.",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        # Given back when the hash ends, not when its caller stops waiting: a hash
        # whose client went away still holds its thread until it is done.
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)
