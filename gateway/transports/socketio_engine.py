"""python-engineio, hardened: the Engine.IO side of `socketio_guard.py` (whose
docstring lists each case, library by library).  Every use of python-engineio's
internals (Engine.IO's socket's class, its `_async` table, the aiohttp driver's
`WebSocket`, `handle_post_request`, `poll`, `schedule_ping`) is in this module;
`socketio_queue.py` holds those of the outgoing side.

    _CheckedWebSocket  a websocket's frames: Engine.IO packets or the session's end;
                       every frame counted against the message rate, the loop's
                       turn every FRAMES_PER_TURN, an upgrade's probe due in time
    EngineIOServer     the socket class and queue below; a POST whose session ended
                       while it was read answered 400
    _Socket            what an idle socket holds and each packet costs cut; a
                       client's unread answers bounded (MAX_HELD_PACKETS)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import engineio
from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestPayloadError
from engineio.async_drivers import aiohttp as engineio_aiohttp

from gateway.edge.connections import EveryInterval
from gateway.edge.throttle import FRAMES_PER_TURN, MessageRate
from gateway.errors import CLIENT_GONE
from gateway.transports.due import DueQueue
from gateway.transports.socketio_queue import MAX_QUEUED_PACKETS, PacketQueue, end_long_poll

log = logging.getLogger(__name__)

# What a session may hold unread in its queue before it is ended: the gateway's own
# events wait in the outbox past MAX_QUEUED_PACKETS (`socketio_queue.has_room`), but
# what a client provokes (a refused CONNECT, an ack, a NOOP for each UPGRADE) was
# queued whether or not it read any of it (a probe's unread answers: 850 MB).  The
# characters counted are those of answers (`PacketQueue.answer_chars`), not of the
# gateway's events: a reply's last event carries its whole text, and a slow reader
# is not cut for it.
MAX_HELD_PACKETS = 256
MAX_HELD_ANSWER_CHARS = 4 * 1024 * 1024


_flooding = EveryInterval(log)
_unread = EveryInterval(log)

# What `receive` gives for a socket that is over (the driver's `wait` then fails).
_WS_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)

# OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP.
ENGINEIO_TYPES = frozenset(range(len(engineio.packet.packet_names)))


class _CheckedWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp websocket, whose frames are Engine.IO packets or nothing:
    a frame that does not decode ends the session as a broken transport would."""

    async def __call__(self, environ: Any) -> Any:
        sock = getattr(self.handler, "__self__", None)
        try:
            return await self._serve(environ)
        except ConnectionError:
            if getattr(self, "environ", None) is not None:
                raise  # (past the handshake: Engine.IO's own to handle)
            # Its client left during the handshake: not the server's fault (a 500
            # and a traceback in the log, no token needed).  A session the handshake
            # opened goes with it (kept, it waited for its ping timeout); one it was
            # to upgrade from long-polling goes on.
            if sock is not None and not sock.connected and not sock.closed:
                await end_session(sock)
            return web.Response(status=CLIENT_GONE)
        except asyncio.CancelledError:
            # aiohttp cancels the handler once the client's TCP connection is gone
            # (handler_cancellation): Engine.IO's loop may be past its last read but
            # not yet at its session's close, which must still happen (a session
            # left open keeps its user's seat and outbox until the ping timeout).
            # Only the session's own transport ends it: an upgrade from long-polling
            # cut before it finished leaves the polling session as it was.
            if sock is not None and not sock.closed and not _upgrade_given_up(sock):
                await end_session(sock, sock.server.reason.TRANSPORT_CLOSE)
            raise
        finally:
            if sock is not None:
                _upgrade_given_up(sock)

    async def _serve(self, environ: Any) -> Any:
        """The driver's own `__call__`, but pings are not answered by aiohttp: no
        Engine.IO client sends one (its pings are packets), and aiohttp answered
        each at once, with no bound and no turn for the loop (a probe's 100,000
        in one write: 1 s in which no other client got anything)."""
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, autoping=False
        )
        self._read = 0
        self._rate: MessageRate | None = None  # (made by the first `wait`)
        # An upgrade's probe and UPGRADE must both come by then (`wait`).
        self._upgrade_by = asyncio.get_running_loop().time() + self.server.ping_timeout
        request = environ["aiohttp.request"]
        await self._sock.prepare(request)
        sock = getattr(self.handler, "__self__", None)
        if sock is not None:
            sock.websocket_tcp = request.transport  # cut by `_Socket.send`
        self.environ = environ
        await self.handler(self)
        return self._sock

    async def wait(self) -> Any:
        """The next frame's data, as the driver's `wait`, and an Engine.IO packet.
        Frames already buffered come without a wait: the loop gets a turn every
        FRAMES_PER_TURN.  Every frame counts against the connection's message rate
        (`frames_per_s`; its events are dropped past it by the handlers), a
        WebSocket ping is answered within it, and far past it the session ends as
        a broken transport would (`MessageRate.flooding`).  Before its upgrade is
        done, its probe and its UPGRADE must come within the ping timeout of its
        opening, whatever else it sends meanwhile: one that never sent its probe
        was kept for ever."""
        sock = getattr(self.handler, "__self__", None)
        if self._rate is None:
            self._rate = MessageRate(self.server.frames_per_s)
        while True:
            if sock is not None and not sock.upgraded:
                try:
                    async with asyncio.timeout_at(self._upgrade_by):
                        msg = await self._sock.receive()
                except TimeoutError:
                    raise OSError("no upgrade probe") from None
            else:
                msg = await self._sock.receive()
            self._read += 1
            if self._read == FRAMES_PER_TURN:
                self._read = 0
                await asyncio.sleep(0)
            if msg.type in _WS_ENDS:
                break
            if not self._rate.allow():
                if self._rate.flooding():
                    _flooding.note("engine.io websocket closed: flooding frames")
                    raise OSError("flooding frames")
                if msg.type is WSMsgType.PING:
                    continue  # unanswered
            if msg.type is WSMsgType.PING:
                await self._sock.pong(msg.data)
            elif msg.type is not WSMsgType.PONG:
                break
        data = msg.data
        if not isinstance(data, str | bytes):
            raise OSError()  # (the driver's own: a close, an error)
        try:
            known = engineio.packet.Packet(encoded_packet=data).packet_type in ENGINEIO_TYPES
        except Exception as exc:
            log.debug("engine.io frame refused: %s", type(exc).__name__)
            raise OSError("not an Engine.IO packet") from None
        if not known:
            log.debug("engine.io frame refused: an unknown packet type")
            raise OSError("not an Engine.IO packet")
        return data


async def end_session(sock: Any, reason: Any = None) -> None:
    """An Engine.IO session closed at once and forgotten by its server (Engine.IO's
    own close waits for its queue to drain, and keeps it listed meanwhile)."""
    closing = sock.close(wait=False, abort=True, **({} if reason is None else {"reason": reason}))
    await asyncio.shield(closing)
    sock.server.sockets.pop(sock.sid, None)


def _upgrade_given_up(sock: Any) -> bool:
    """An upgrade from long-polling that did not finish (its connection cut before
    its probe, or its probe never came) lets the polling session go on: Engine.IO
    holds every packet back from the polls while `upgrading`, and on a cut before
    the probe it leaves the flag set (its polls then get nothing but NOOPs)."""
    if sock.upgrading and not sock.upgraded:
        sock.upgrading = False
        return True
    return False


class EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A websocket's pings a second (`_CheckedWebSocket.wait`); `GuardedServer`'s.
        self.frames_per_s: float | None = None
        # The driver's table is shared by every server of the process: a copy.
        table: dict[str, Any] = getattr(self, "_async")  # noqa: B009 (untyped library)
        self._async = {**table, "websocket": _CheckedWebSocket}
        # The sockets due a ping, one timer for them all (`due.py`).
        self._pings: DueQueue[Any] = DueQueue(self.ping_interval, _ping_due, "engine.io ping")

    async def handle_request(self, request: Any) -> Any:
        """Engine.IO's; a POST whose session ended while its body was read (a
        second POST past the bound ended it, or its ping timeout) gets the 400 of
        any POST to an ended session: Engine.IO failed it on a response it never
        made (an UnboundLocalError, a 500 and an ERROR traceback)."""
        try:
            return await super().handle_request(request)
        except UnboundLocalError:
            sid = request.query.get("sid")
            if request.method != "POST" or sid is None or sid in self.sockets:
                raise
            log.debug("engine.io POST answered 400: its session ended while it was read")
            return web.json_response({"detail": "Session ended; the client reconnects"}, status=400)

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        """Each socket's packet queue (Engine.IO's utility hook): a lean one."""
        return PacketQueue()

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # A socket of this server's own class from its first event on, before
            # its first ping is scheduled and its transport runs.
            sock = self.sockets.get(args[0])
            if sock is not None and type(sock) is engineio.async_socket.AsyncSocket:
                sock.__class__ = _Socket
        return await super()._trigger_event(event, *args, **kwargs)


class _Socket(engineio.async_socket.AsyncSocket):  # type: ignore[misc]
    """Engine.IO's socket, with what each idle socket holds and each packet costs cut
    (bench/RESULTS.md, issue 19):

    schedule_ping  the next ping joins the server's `DueQueue` (one timer for all), where Engine.IO
                   starts a task asleep for the interval (a task, its coroutine and
                   its timer: about 1.1 KB a socket)
    poll           at most MAX_QUEUED_PACKETS at once (a long poll's response: more
                   and python-socketio's client drops the session); the writer (or a
                   long poll) awaits its queue's `get` itself,
                   where Engine.IO wraps it in `wait_for` (a timer and a future
                   made and dropped for every packet, and on Python 3.11 a task,
                   held by every idle socket's writer).
                   What its timeout did, ending a wait on a session that is
                   over, `close` does: pings are queued every interval while a
                   client answers them, and a session that closes for any reason
                   (a ping timeout among them, which queues nothing) queues its
                   end, so a writer or a long poll never outlives it
    close          Engine.IO's, then the end (None) queued for whatever still waits
    """

    last_ping: float | None  # (Engine.IO's: when the last ping went, None once ponged)

    def schedule_ping(self) -> None:
        if self.last_ping:  # (as Engine.IO: once the last ping's pong is in)
            self.last_ping = None
            self.server._pings.add(self)

    async def send(self, pkt: Any) -> None:
        """Engine.IO's; but a session whose client leaves MAX_HELD_PACKETS (or
        MAX_HELD_ANSWER_CHARS of answers) unread is ended instead, its client cut
        off as from a broken transport (what the gateway sends of its own waits for room first:
        only what a client provokes comes here, and a client that provokes
        answers without reading them held them all, for as long as it sent a
        pong now and then)."""
        queue = self.queue
        if not self.closed and (
            queue.qsize() >= MAX_HELD_PACKETS or queue.answer_chars >= MAX_HELD_ANSWER_CHARS
        ):
            _unread.note(
                "engine.io session ended: its client left %d packets unread (%d characters "
                "of answers)",
                queue.qsize(),
                queue.answer_chars,
            )
            await end_session(self)
            end_long_poll(self)
            tcp = getattr(self, "websocket_tcp", None)
            if tcp is not None:
                tcp.abort()  # (its writer waits on a client that reads nothing)
            return
        await super().send(pkt)

    async def close(self, *args: Any, **kwargs: Any) -> None:
        closing = not (self.closed or self.closing)
        await super().close(*args, **kwargs)
        if closing:
            self.queue.put_nowait(None)

    async def handle_post_request(self, environ: Any) -> None:
        """Engine.IO's, but the body read whole (Engine.IO reads it with one
        `read(length)`, which aiohttp answers with what it has buffered: a large
        POST was cut short, its packets lost or taken for garbage); a body that is
        no Engine.IO payload, or ends before its length, ends the session at once
        (Engine.IO's server then answers 400), where Engine.IO logged its traceback
        and answered 200; and one too long ends it without waiting for a poll that
        will not come (Engine.IO's close waits for its queue to drain)."""
        body = environ.get("wsgi.input")
        if body is not None:
            environ["wsgi.input"] = _WholeBody(body)
        try:
            await super().handle_post_request(environ)
        except engineio.exceptions.EngineIOError:
            await self.close(wait=False, abort=True)
            raise
        except (ValueError, KeyError, asyncio.IncompleteReadError, RequestPayloadError) as exc:
            # (UnicodeDecodeError, a bad base64 attachment, too many packets: ValueError.)
            log.debug("engine.io payload refused: %s", type(exc).__name__)
            await self.close(wait=False, abort=True)
            raise engineio.exceptions.EngineIOError("not an Engine.IO payload") from None

    async def poll(self) -> list[Any]:
        queue = self.queue
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            raise engineio.exceptions.QueueEmpty() from None  # what Engine.IO raises
        queue.task_done()
        packets = [first] if first is not None else []
        # At most MAX_QUEUED_PACKETS a poll: python-engineio's client refuses a payload
        # of more (`Payload.max_decode_packets`, 16) and drops its session.
        while packets and queue.qsize() and len(packets) < MAX_QUEUED_PACKETS:
            packet = queue.get_nowait()
            queue.task_done()
            if packet is None:
                queue.put_nowait(None)  # the end: the next poll returns it
                break
            packets.append(packet)
        return packets


class _WholeBody:
    """A request body whose `read(n)` returns n bytes (or fails)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, n: int = -1) -> bytes:
        try:
            if n < 0:
                data: bytes = await self._stream.read()
                return data
            exact: bytes = await self._stream.readexactly(n)
            return exact
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            # Cut short: its client left, or the body deadline closed the connection
            # (its 408 written).  Engine.IO logs a traceback for an error it does not
            # know, once per request, and ends the session for this one.
            raise engineio.exceptions.EngineIOError("request body cut short") from None


def _ping_due(sock: Any) -> bool:
    """What Engine.IO's `_send_ping` does once its sleep ends: the ping queued and its
    time noted (its pong, or the ping timeout, is Engine.IO's as before).  Not
    queued again: its pong does that (`_Socket.schedule_ping`)."""
    if not sock.closing and not sock.closed:
        sock.last_ping = time.time()
        sock.queue.put_nowait(engineio.packet.Packet(engineio.packet.PING))
    return False
