"""An event stream's keepalive and stall watch (`transports.sse.Keepalive`), against a
transport that reports what waits in its buffer (the edge: a socket's send buffer is
faked, the timing is real, bounds scaled down to tenths of a second).

Found by a review (2026-12-07): the stall was measured from the last write the
writer finished, so after a model's silence longer than the bound, the first
bytes to wait at all (a write of more than 64 KiB draining) dropped the client at
once; and the keepalive's own lines did not count as traffic, so they went out
at every tick of the watch, three times as often as asked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.transports.sse import Keepalive

EVERY_S = 0.3
STALL_S = 0.4  # the watch looks every 0.1 s


class Transport:
    """What waits in a socket's send buffer, as the test sets it."""

    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


class Response:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.lines.append(data)


def watch(transport: Transport, response: Response) -> Keepalive:
    fake: Any = response
    return Keepalive(fake, EVERY_S, transport=transport, stall_s=STALL_S)


async def test_bytes_that_drain_after_a_long_silence_are_no_stall() -> None:
    transport, response = Transport(), Response()
    async with watch(transport, response):
        await asyncio.sleep(STALL_S * 2.5)  # the model is silent (keepalives go out)
        transport.buffered = 200_000  # a big write, draining…
        await asyncio.sleep(0.15)
        transport.buffered = 90_000  # …taken in part…
        await asyncio.sleep(0.15)
        transport.buffered = 0  # …and whole
        await asyncio.sleep(0.15)
    assert not transport.aborted


async def test_a_client_that_takes_nothing_while_bytes_wait_is_dropped() -> None:
    transport, response = Transport(), Response()
    async with watch(transport, response) as keepalive:
        keepalive.wrote()
        transport.buffered = 70_000  # waits, and nothing of it is taken
        await asyncio.sleep(STALL_S * 2.5)
    assert transport.aborted


async def test_a_slow_reader_is_fed_at_its_pace() -> None:
    transport, response = Transport(), Response()
    async with watch(transport, response):
        transport.buffered = 1_000_000
        for _ in range(12):  # 1.2 s, three times the bound: a little taken each tick
            await asyncio.sleep(0.1)
            transport.buffered -= 10_000
    assert not transport.aborted


async def test_keepalives_go_out_every_so_often_in_a_silence() -> None:
    transport, response = Transport(), Response()
    async with watch(transport, response):
        await asyncio.sleep(EVERY_S * 4 + 0.05)
    # About one each EVERY_S (4 here), not one at each of the watch's shorter ticks
    # (12 here); the bounds leave room for a loaded machine's late wake-ups.
    assert 2 <= len(response.lines) <= 5, response.lines
