"""A pure-API reply whose client leaves as its headers go out (a probe, 2026-12-07).

Before: the response's `prepare` raised outside the stream's `try`, so the error
middleware answered a 500 with a traceback, and the reply's events, never
iterated, were closed without running their `finally` (an async generator
closed before its first step never runs its body): the user's reply slot was
never given back (28 of 32 left after 10 such requests) and the model server's
request ran on to its end.  Now the stream ends as any other whose client
leaves: the slot back, the model server's request closed, a 499 in the log.

The client's leaving is made exact here: the handler closes its transport just
before the stream is prepared, a real aiohttp server and client around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp
from aiohttp import web

from gateway.chat.accounting import counted
from gateway.edge.origins import OriginPolicy
from gateway.events import Event, TextDelta
from gateway.transports.sse import close_unstarted, stream_events
from tests.bus.support import eventually
from tests.fakes.upstream import serve_app


class Upstream:
    """A model server's stream as the reply's events hold it: open until closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.first = asyncio.Event()  # the model server's first token, held back

    async def events(self) -> AsyncGenerator[Event, None]:
        try:
            await self.first.wait()
            yield TextDelta(None, "m1", 1, "hello")
            await asyncio.Event().wait()  # (never: the test ends before)
        finally:
            self.closed.set()


async def test_a_client_gone_as_the_headers_go_out_ends_its_reply() -> None:
    upstream = Upstream()
    released: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        events = counted(upstream.events(), "u1", "m1", lambda: released.append("slot"))
        assert request.transport is not None
        request.transport.close()  # the client is gone now
        return await stream_events(
            request,
            events,
            lambda event: [b"data: x\n\n"],
            origins=OriginPolicy([]),
            keepalive_s=15,
            flavour="openai",
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner, port = await serve_app(app)
    try:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions") as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass  # the connection was closed under it: what a gone client sees
        await eventually(lambda: released, what="the reply's slot given back")
        await eventually(upstream.closed.is_set, what="the model server's request closed")
        assert released == ["slot"]
    finally:
        await runner.cleanup()


async def test_events_never_iterated_are_closed_where_they_first_wait() -> None:
    # Why `close_unstarted` exists: `aclose()` alone skips an unstarted body.
    alone = Upstream()
    events = alone.events()
    await events.aclose()
    assert not alone.closed.is_set()

    upstream = Upstream()
    close_unstarted(upstream.events())
    await eventually(upstream.closed.is_set, what="the body's finally ran")


async def test_events_that_give_an_event_at_once_are_closed_at_it() -> None:
    upstream = Upstream()
    upstream.first.set()  # the first step does not wait: it gives its event
    close_unstarted(upstream.events())
    await eventually(upstream.closed.is_set, what="closed at the event it gave")
