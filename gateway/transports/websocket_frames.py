"""Writing a text frame (or a ping) without awaiting: the raw WebSocket transport's
fast path.

aiohttp's `WebSocketResponse.send_str` is a coroutine, though for an uncompressed
frame it writes synchronously and only awaits when the send buffer is full.  Run
from a publisher (which never awaits), each frame would need a task switch, so
the transport writes through aiohttp's own frame writer here while the socket is
*writable now*: uncompressed, its transport open and its writing not paused by
flow control (`writing_paused`: the send buffer went over its high-water mark,
64 KiB, and has not yet drained to its low-water mark), which is exactly when
`send_str` would not await (it awaits only once paused, and then not for every
frame).  Anything else goes through `send_str` from a task.

Not the buffer's size against the low-water mark: uvloop's is 16 bytes, so a
frame waiting in the buffer for the loop to send it would send every later one
down the slow path.

aiohttp internals used, all of `aiohttp/_websocket/writer.py` (3.14; the lock
pins the version, and the fast-path tests of `tests/transports/test_websocket.py` fail if they
change): `WebSocketResponse._writer`, `WebSocketWriter._write_websocket_frame`
(header, payload, `transport.write`), and its `_output_size`/`_limit` counter,
which `send_frame` resets once over the limit (reset here the same way).
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web
from aiohttp._websocket.writer import WebSocketWriter

from gateway.text import storable

# Another aiohttp without them: every frame goes through `send_str`, from the pump.
_USABLE = all(hasattr(WebSocketWriter, name) for name in ("_write_websocket_frame", "send_frame"))


def writable_now(ws: web.WebSocketResponse) -> bool:
    """A frame written now would go straight to the socket, as `send_str` would."""
    writer = ws._writer
    if not _USABLE or writer is None or writer.compress or ws.closed:
        return False
    return not writer.protocol.writing_paused and not writer.transport.is_closing()


def write_now(ws: web.WebSocketResponse, frame: str) -> None:
    """One text frame, written now.  A frame that cannot be encoded as UTF-8 (a lone
    surrogate) goes without what cannot be encoded, as the awaited path sends it.
    Raises ConnectionResetError once the socket closes (its close frame is sent
    or its transport is closing): nothing is written after the close."""
    writer = ws._writer
    if writer is None or ws.closed:
        raise ConnectionResetError("the WebSocket is closed")
    try:
        payload = frame.encode()
    except UnicodeEncodeError:
        payload = storable(frame).encode()
    writer._write_websocket_frame(payload, WSMsgType.TEXT, 0)
    if writer._output_size > writer._limit:
        writer._output_size = 0


def pingable_now(ws: web.WebSocketResponse) -> bool:
    """A ping may be written now: the socket open, whatever the compression (control
    frames are never compressed) and the backlog (it waits behind it, as aiohttp's
    heartbeat's did)."""
    writer = ws._writer
    if writer is None or ws.closed:
        return False
    return not writer.transport.is_closing()


def ping_now(ws: web.WebSocketResponse) -> None:
    """A ping frame (no payload), as `ws.ping()` would write it, now: only while
    `pingable_now`.  Another aiohttp without the frame writer: `ws.ping()` in a task."""
    writer = ws._writer
    if writer is None or ws.closed:
        raise ConnectionResetError("the WebSocket is closed")
    if not _USABLE:
        task = asyncio.get_running_loop().create_task(ws.ping())
        _PINGING.add(task)
        task.add_done_callback(_pinged)
        return
    writer._write_websocket_frame(b"", WSMsgType.PING, 0)
    if writer._output_size > writer._limit:
        writer._output_size = 0


# Pings sent by `ws.ping()` (the loop holds tasks only weakly).
_PINGING: set[asyncio.Task[None]] = set()


def _pinged(task: asyncio.Task[None]) -> None:
    _PINGING.discard(task)
    if not task.cancelled():
        task.exception()  # a socket gone meanwhile: its reader sees it
