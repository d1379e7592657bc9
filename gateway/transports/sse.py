"""SSE transport: one HTTP response carrying one reply's frames.

The response goes out with `X-Accel-Buffering: no` and `Cache-Control:
no-cache`, so nginx streams it even with `proxy_buffering on`, and a
comment line every `keepalive_s` of silence keeps proxies' idle timers
(nginx: 60 s) from cutting a slow reply.  A client that goes away ends the
event stream, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Mapping

from aiohttp import web

from gateway.edge.origins import OriginPolicy, grant_stream
from gateway.events import Event
from gateway.flavours.sse import KEEPALIVE

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def stream_events(
    request: web.Request,
    events: AsyncGenerator[Event, None],
    encode: Callable[[Event], list[bytes]],
    *,
    origins: OriginPolicy,
    keepalive_s: float,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    grant_stream(request, response, origins)
    async with contextlib.aclosing(events):
        await response.prepare(request)
        last_write = time.monotonic()

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(keepalive_s)
                if time.monotonic() - last_write >= keepalive_s:
                    await response.write(KEEPALIVE)

        pinger = asyncio.create_task(keepalive())
        try:
            async for event in events:
                frames = encode(event)
                if frames:
                    await response.write(frames[0] if len(frames) == 1 else b"".join(frames))
                    last_write = time.monotonic()
            await response.write_eof()
        except ConnectionResetError:
            # The client left; leaving the `async with` closes the upstream.
            pass
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await pinger
    return response


async def send_all(
    request: web.Request, frames: list[bytes], origins: OriginPolicy
) -> web.StreamResponse:
    """A short event stream whose every frame is known now."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    grant_stream(request, response, origins)
    await response.prepare(request)
    await response.write(b"".join(frames))
    await response.write_eof()
    return response
