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
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping

from aiohttp import web

from gateway.edge import access, metrics
from gateway.edge.origins import OriginPolicy, grant_stream
from gateway.edge.stopping import stopped
from gateway.errors import CLIENT_GONE, SERVER_STOPPING, Unavailable
from gateway.events import Event, ReplyFailed
from gateway.flavours.sse import KEEPALIVE

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Keepalive:
    """A comment line on a prepared stream after every `every_s` of silence (its own
    lines count as traffic); call `wrote()` after each write.  `async with` runs it
    beside the writer.

    With `stall_s`, it also drops a client that takes nothing for that long while
    bytes wait for it (a frozen reader, a closed TCP window): its transport is
    aborted, so the writer's waiting write fails as a client's leaving does and
    the reply's model server request is closed.  Taking anything counts: a write
    done, or what waits growing less; a client that reads slowly is fed at its
    pace, and a long silence of the model's is no stall."""

    def __init__(
        self,
        response: web.StreamResponse,
        every_s: float,
        *,
        transport: asyncio.BaseTransport | None = None,
        stall_s: float | None = None,
    ) -> None:
        self._response = response
        self._every_s = every_s
        self._transport = transport
        self._stall_s = stall_s
        self._last = time.monotonic()  # the last line written, ours or the writer's
        self._waited = 0  # bytes waiting at the last look
        self._stuck_since: float | None = None  # since when they have waited, untaken
        self._task: asyncio.Task[None] | None = None

    def wrote(self) -> None:
        self._last = time.monotonic()
        self._stuck_since = None

    async def _ping(self) -> None:
        tick = self._every_s if self._stall_s is None else min(self._every_s, self._stall_s / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            waiting = self._waiting()
            if waiting:
                if self._stuck_since is None or waiting < self._waited:
                    self._stuck_since = now  # (newly waiting, or some was taken)
                self._waited = waiting
                if self._stall_s is not None and now - self._stuck_since >= self._stall_s:
                    self._drop()
                    return
                continue  # what waits for the client is traffic enough
            self._stuck_since, self._waited = None, 0
            if now - self._last >= self._every_s:
                await self._response.write(KEEPALIVE)
                self._last = time.monotonic()

    def _waiting(self) -> int:
        """Bytes written and not yet taken by the client (uvloop's transports are no
        `asyncio.WriteTransport`: asked by what they do)."""
        buffered = getattr(self._transport, "get_write_buffer_size", None)
        return int(buffered()) if buffered is not None else 0

    def _drop(self) -> None:
        metrics.HOT.slow_disconnects += 1
        log.warning("slow event stream dropped: it took nothing for %.0f s", self._stall_s)
        abort = getattr(self._transport, "abort", None)
        if abort is not None:
            abort()

    async def __aenter__(self) -> Keepalive:
        self._task = asyncio.create_task(self._ping())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await self._task


async def stream_events(
    request: web.Request,
    events: AsyncGenerator[Event, None],
    encode: Callable[[Event], list[bytes]],
    *,
    origins: OriginPolicy,
    keepalive_s: float,
    stall_s: float | None = None,
    flavour: str,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    grant_stream(request, response, origins)
    try:
        await response.prepare(request)
    except BaseException as exc:
        # Its client left as the headers went out (the write refused, or the
        # handler cancelled): its reply ends as any other whose client leaves.
        close_unstarted(events)
        if isinstance(exc, ConnectionError):
            return web.Response(status=CLIENT_GONE)  # not the error middleware's 500
        raise
    async with contextlib.aclosing(events):
        counted = access.connection_opened("sse", flavour)
        last: list[bytes] = []  # the frames written last
        try:
            watch = Keepalive(response, keepalive_s, transport=request.transport, stall_s=stall_s)
            async with watch as keepalive:
                async for event in events:
                    frames = encode(event)
                    if frames:
                        last = frames
                        await response.write(frames[0] if len(frames) == 1 else b"".join(frames))
                        keepalive.wrote()
                        metrics.HOT.delivered_sse += 1
                await response.write_eof()
        except ConnectionResetError:
            # The client left; leaving the `async with` closes the upstream.
            pass
        except asyncio.CancelledError as cancelled:
            if not stopped(cancelled):
                raise
            # A stopping replica past its grace (`ChatService.stop_pure_replies`):
            # the stream ends as a failed reply does, in its protocol, not cut
            # (unless its end went out already: then it is done).
            if not response.prepared or getattr(response, "_eof_sent", False):
                return response
            with contextlib.suppress(ConnectionResetError):
                if not (last and last[-1].rstrip().endswith(b"[DONE]")):
                    await response.write(b"".join(encode(STOPPED)))
                await response.write_eof()
        finally:
            counted()
    return response


def close_unstarted(events: AsyncGenerator[Event, None]) -> None:
    """Closes a reply's events that were never iterated, in a task of its own.

    An async generator closed before its first step never runs its body, so
    never its `finally`, where a pure-API reply gives back its slot and closes
    its model server's request (`accounting.counted`, the upstream's stream).
    It is started, and cancelled where it first waits.  In a task of its own:
    the handler that owned the events may be cancelled already (its client
    left), and would be interrupted at its first wait."""
    task = asyncio.get_running_loop().create_task(_started_and_cancelled(events))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()


async def _started_and_cancelled(events: AsyncGenerator[Event, None]) -> None:
    step = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)  # the step runs until its first wait
    step.cancel()
    await asyncio.wait([step])
    if not step.cancelled():
        step.exception()  # (retrieved: there is no one left to tell)
    await events.aclose()  # when the step gave an event: closed at it


# What a pure-API stream cancelled by a stopping replica ends with (the OpenAI
# encoder's failure: an error chunk, then `[DONE]`; only pure-API replies are
# cancelled so).
STOPPED = ReplyFailed(None, "", 0, Unavailable.code, SERVER_STOPPING)


async def send_all(
    request: web.Request, frames: list[bytes], origins: OriginPolicy
) -> web.StreamResponse:
    """A short event stream whose every frame is known now."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    grant_stream(request, response, origins)
    try:
        await response.prepare(request)
        await response.write(b"".join(frames))
        await response.write_eof()
    except ConnectionError:
        return web.Response(status=CLIENT_GONE)  # its client left
    return response
