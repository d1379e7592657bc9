"""How events reach one raw WebSocket, and how delivery ends it: the part of a
connection (`websocket.Connection` is a `Delivering`) that writes.

Theory of operation::

    rooms ─▶ Outbox ──first event after a quiet spell──▶ _arrived
                                                          │
              socket writable now (not paused by flow control):
                _flush at the end of this loop turn: the turn's events encoded
                (`endpoint.encode`) and written together, no task, no await
              else:
                _pump, a task made then: `send_str` waits for the client to
                read; over once the outbox is empty (the next event is
                flushed again)

    ends      the outbox overflowed (the client stopped reading) or took
              nothing for `stalled_client_s` → 1013 "too slow" (it may
              reconnect); a bug in an encoder → 1011; from a callback, so the
              close runs in a task of its own (`_closing`) and the phase is
              CLOSING at once: nothing more is written

Events stay in the outbox until written, so its rules still hold for them:
deltas merged for a slow client, its bounds, a resume's divert.  Written as
each came, the socket's sends would wake the client in the middle of the
turn: `bench_ab --flavour nadoo-ws` measured 5 % more CPU per chunk, all of
it the kernel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import web

from gateway.application.realtime import Outbox, Overflow
from gateway.edge import metrics
from gateway.edge.auth import Principal
from gateway.errors import WS_INTERNAL_ERROR, WS_TRY_AGAIN_LATER
from gateway.events import Event
from gateway.text import storable
from gateway.transports import websocket_frames as frames

log = logging.getLogger(__name__)

# How long a close handshake may take before the TCP connection is cut.
CLOSE_TIMEOUT_S = 2.0
# Closes in progress (the loop holds tasks only weakly).
_CLOSING: set[asyncio.Task[None]] = set()


class Phase(enum.Enum):
    """A connection's life; only OPEN reads frames and writes events::

    OPENING ──endpoint opened──▶ OPEN ──client left──────────────────────▶ CLOSED
       │                          └──too slow / access ended / a bug──▶ CLOSING ──▶ CLOSED
       └──refused (token, origin, endpoint)─────────────────────────▶ CLOSING ──▶ CLOSED
    """

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Encodes(Protocol):
    """What delivery needs of the flavour's endpoint (`websocket.Endpoint`)."""

    def encode(self, conn: Any, event: Event) -> list[str]: ...


class Delivering:
    """A connection's socket, outbox and phase, and the writing of its events.

    The outbox's callbacks are bound methods (`_arrived`, `_overflowed`): most
    connections are idle nearly all their life, and a closure each would cost
    about 200 bytes more (`bench_idle`)."""

    __slots__ = ("endpoint", "flushing", "outbox", "phase", "principal", "pump", "request", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, endpoint: Encodes) -> None:
        self.ws = ws
        self.request = request
        self.endpoint = endpoint
        self.principal: Principal | None = None
        self.outbox: Outbox | None = None
        self.phase = Phase.OPENING
        # A `_flush` of the outbox is due at the end of this loop turn.
        self.flushing = False
        # Writes the outbox while the socket is backed up (`_pump`); only then.
        self.pump: asyncio.Task[None] | None = None

    async def send(self, frame: str) -> None:
        """One text frame now (replies to the client's own frames: pong, errors)."""
        if not self.ws.closed:
            await self.ws.send_str(frame)

    # -- what the outbox calls back ------------------------------------------------------
    def _arrived(self, event: Event) -> bool:
        """The outbox's first event after a quiet spell (it calls this when nothing is
        queued or in flight): queued (False), so the outbox's rules hold for it, and
        written from there at the end of this loop turn — or by the pump."""
        if self.phase is Phase.OPENING:
            return False  # written once it is open
        if self.phase is not Phase.OPEN or self.ws.closed:
            return True  # closing: nothing more is sent
        self.writer()
        return False

    def _overflowed(self) -> None:
        if self.phase is not Phase.OPEN:
            return
        log.warning(
            "slow websocket dropped: it fell behind",
            extra={"path": self.request.path, "user": self.principal and self.principal.user_id},
        )
        self.closing(self._drop(WS_TRY_AGAIN_LATER, b"Client too slow; reconnect"))

    # -- writing -----------------------------------------------------------------------
    def writer(self) -> None:
        """What writes the outbox's queue: nothing if a flush or the pump will; a flush
        at the end of the turn while the socket can take frames; else the pump."""
        outbox = self.outbox
        if self.flushing or self.pump is not None or outbox is None or outbox.closed:
            return
        if frames.writable_now(self.ws):
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self.pump = asyncio.get_running_loop().create_task(self._pump(outbox))

    def _flush(self) -> None:
        """The outbox's queue written now, without a task; backed up meanwhile: the
        pump takes over."""
        self.flushing = False
        outbox = self.outbox
        if self.phase is not Phase.OPEN or outbox is None or self.pump is not None:
            return
        if not frames.writable_now(self.ws):
            self.writer()
            return
        events, encode = outbox.take(), self.endpoint.encode
        try:
            for event in events:
                for frame in encode(self, event):
                    frames.write_now(self.ws, frame)
        except ConnectionError:
            return  # the client went away mid-write (or the socket closed); the reader sees it
        except Exception:
            # A bug in an encoder must not reach the loop (or stall the connection).
            log.exception("websocket delivery failed", extra={"path": self.request.path})
            self._broken()
            return
        finally:
            outbox.done()
        metrics.HOT.delivered_websocket += len(events)

    async def _pump(self, outbox: Outbox) -> None:
        """The slow path: the outbox's queue written with `send_str`, which waits for
        the client to read whenever the socket is paused at one of aiohttp's checks
        (every 256 KiB written); over once the outbox is empty."""
        try:
            while self.phase is Phase.OPEN and (events := await outbox.batch()):
                for event in events:
                    for frame in self.endpoint.encode(self, event):
                        await self._send(frame)
                metrics.HOT.delivered_websocket += len(events)
                outbox.done()
                if not len(outbox):
                    return
        except (Overflow, ConnectionError):
            # Overflowed: `_overflowed` closes it.  A client gone mid-write (aiohttp:
            # "Connection lost"): the reader sees it.
            return
        except Exception:
            log.exception("websocket delivery failed", extra={"path": self.request.path})
            self._broken()
        finally:
            if self.pump is asyncio.current_task():
                self.pump = None

    async def _send(self, frame: str) -> None:
        """One frame; one that cannot be encoded as UTF-8 (a lone surrogate some other
        client or a model server slipped in) goes without what cannot be encoded,
        rather than end the writer and silence the connection for good."""
        try:
            await self.ws.send_str(frame)
        except UnicodeEncodeError:
            await self.ws.send_str(storable(frame))

    # -- ending ------------------------------------------------------------------------
    def _broken(self) -> None:
        """Delivery failed (a bug in an encoder): close 1011, the code a bug in handling
        the client's own frame ends with (the client reconnects and reloads)."""
        if self.phase is not Phase.OPEN:
            return
        self.closing(self._drop(WS_INTERNAL_ERROR, b"Internal server error"))

    def closing(self, close: Coroutine[None, None, None]) -> None:
        """An open connection closes, from a callback (it cannot await): CLOSING at
        once, so nothing more is sent, and `close` runs in a task of its own."""
        self.phase = Phase.CLOSING
        task = asyncio.get_running_loop().create_task(close)
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def _drop(self, code: int, reason: bytes) -> None:
        # A client that does not read (or is stuck) will not answer the close handshake.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, message=reason), CLOSE_TIMEOUT_S)
        transport = self.request.transport
        if transport is not None:
            transport.abort()
