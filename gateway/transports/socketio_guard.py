"""python-socketio and python-engineio, hardened against what a client gets wrong.

Fuzzing the Socket.IO path over the wire (tests/security/test_fuzz_wire.py)
found that the libraries let a malformed packet through as an exception:

    a websocket text frame that is no Engine.IO packet ("x", "", "b17")
        libraries: the error escapes Engine.IO's loop, a 500 is written onto the
                   upgraded socket, the session is kept until its ping timeout
        here:      the frame ends the session as a broken transport would; the
                   client reconnects
    a Socket.IO packet that does not decode ("4x", "42[", "49", JSON 1,000
    deep, a 101-digit number, an empty binary frame)
        libraries: a traceback per packet; "45" leaves a binary packet awaiting
                   attachments, and every later packet fails
        here:      dropped, one debug line, the half-built packet forgotten; an
                   event that asked for an ack gets an empty one
    an event whose name is not a string, or is reserved ("disconnect", "connect")
        libraries: a TypeError, or our `disconnect` handler run on a socket that
                   stays open
        here:      dropped, as above
    a handled event with other than one argument
        libraries: a TypeError in a task, no ack
        here:      an empty ack (`socketio.py`)
    a client gone while Engine.IO closes its websocket (aiohttp cancels the handler)
        libraries: the session is never closed: kept, with its seat and outbox,
                   until its ping timeout
        here:      closed all the same
    a second CONNECT on one Engine.IO session
        libraries: a second Socket.IO session; the first is never disconnected
                   (its seat, outbox and lease kept for ever)
        here:      dropped
    a long-polling POST whose body is no Engine.IO payload ("zzz", bytes that are
    not UTF-8)
        libraries: a traceback logged twice (once past the gateway's log format
                   and masking), and 200
        here:      the session ended at once, 400, one debug line
    a long-polling POST longer than GATEWAY_MAX_FRAME_BYTES
        libraries: the session's close waits for a poll the client, blocked on
                   its POST, never sends: 60 s, then the body deadline's 408
        here:      the session ended at once, 413 (`socketio_front.py`)
    a POST whose session ends while its body is read (a second POST past the bound)
        libraries: Engine.IO fails on a response it never made: 500, a traceback
        here:      400, as any POST to an ended session
    a client that provokes answers (a refused CONNECT, an ack, a NOOP for each
    UPGRADE) and reads none of them, sending a pong now and then
        libraries: every answer queued, for ever (a 1 MB namespace is echoed back
                   in each refusal: 850 MB on one socket)
        here:      MAX_HELD_PACKETS or MAX_HELD_ANSWER_CHARS unread end the session; a
                   namespace past MAX_NAMESPACE_CHARS is dropped, never echoed
    a packet of 1 MiB
        libraries: decoded by the standard library's `json` on the loop, before
                   any rate (100 ms for a list of empty lists)
        here:      past MAX_PACKET_CHARS not decoded (an event that asked for an
                   ack is told in it); below it read by orjson where it can
    WebSocket frames: pings, a flood of packets, an upgrade that never probes
        libraries: aiohttp answers every ping at once, no frame is counted, and
                   frames already buffered are read without the loop's turn; an
                   upgrade's websocket waits for its probe for ever
        here:      every frame counts against the message rate (pings past it
                   unanswered), far past it the session ends; the loop's turn
                   every FRAMES_PER_TURN; the probe within the ping timeout

Every use of python-socketio's internals (`_handle_eio_message`,
`_handle_connect`, `_handle_event`, the session's `environ`, `_binary_packet`,
`packet_class`, `Packet.json`) is in this module, python-engineio's (its
socket's class, the aiohttp driver's `WebSocket`, `_async`) in
`socketio_engine.py`; `socketio_queue.py` holds those of the outgoing side.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import socketio

from gateway import jsonwire
from gateway.transports.socketio_engine import EngineIOServer

log = logging.getLogger(__name__)


# Event names the protocol keeps for itself (socket.io-client refuses to emit them),
# and "*", python-socketio's name for its catch-all handler (an event so named would
# reach it without its name, as if it were the handler's own call).
RESERVED = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
    | {"*"}
)


# Binary attachments one Socket.IO packet may announce.  No event the gateway reads
# carries any (Open WebUI's are JSON); a client's library may still send bytes as
# one, so a few are read, all of them within the packet bound (`max_frame_bytes`).
MAX_ATTACHMENTS = 16

# A Socket.IO packet's text, read only below this (and `max_frame_bytes`): the web
# app's events are a few hundred bytes, and decoding a 1 MiB one (a list of
# 330,000 empty lists) held the loop for 100 ms, before any rate, no token needed.
MAX_PACKET_CHARS = 64 * 1024
# A namespace named by a packet: ours is "/", and python-socketio repeats the one a
# client names in its answer (a refused CONNECT, an empty ack).
MAX_NAMESPACE_CHARS = 128

# A Socket.IO packet's head: its type, attachments, namespace and ack id.
_HEAD = re.compile(r"(?P<type>[0-6])(?:\d{1,15}-)?(?:(?P<nsp>/[^,]{0,128}),)?(?P<id>\d+)?")

# What is left of a session's WSGI environ once its Socket.IO connect is done.
KEPT_ENVIRON = ("aiohttp.request", "REQUEST_METHOD", "QUERY_STRING", "PATH_INFO")


def _shed_headers(environ: Any) -> None:
    """The handshake's WSGI environ (Engine.IO's copy of the request, every header a
    key) is kept by python-socketio for the session's life, but read only by the
    connect handler, which has run: emptied in place (the websocket's own handler
    holds it too), it frees about 1.5 KB per idle socket (bench/RESULTS.md)."""
    if isinstance(environ, dict):
        kept = {key: environ[key] for key in KEPT_ENVIRON if key in environ}
        environ.clear()
        environ.update(kept)


# A run of digits that may be an integer past 64 bits, which orjson reads otherwise.
_LONG_DIGITS = re.compile(r"\d{19}")


def _packet_loads(text: str) -> Any:
    if _LONG_DIGITS.search(text):
        return socketio.packet.Packet.json.loads(text)
    return jsonwire.loads(text)


class _PacketJson:
    """The JSON of the packets a client sends, read by orjson (`jsonwire.loads`: 4
    to 7 times faster for numbers), and by the standard library where orjson would
    read it otherwise (NaN, lone surrogates: `jsonwire`; integers past 64 bits,
    here); what python-socketio writes, as before."""

    dumps = staticmethod(socketio.packet.Packet.json.dumps)
    loads = staticmethod(_packet_loads)


class _Packet(socketio.packet.Packet):  # type: ignore[misc]
    """A Socket.IO packet; an event whose arguments do not decode (JSON cut short,
    nested past the parser, a number past 100 digits) keeps its type and ack id,
    with no data, so that its client still gets an (empty) ack."""

    json = _PacketJson

    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments = int(super().decode(encoded_packet))
        except (ValueError, RecursionError):
            events = (socketio.packet.EVENT, socketio.packet.BINARY_EVENT)
            if getattr(self, "packet_type", None) not in events or self.id is None:
                raise
            # An event of no arguments, whatever attachments it announced (they
            # come as packets of their own, and are refused as such).
            self.packet_type, self.data = socketio.packet.EVENT, None
            attachments = 0
        if self.namespace is not None and len(self.namespace) > MAX_NAMESPACE_CHARS:
            raise ValueError("a namespace past MAX_NAMESPACE_CHARS")
        return attachments


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """`socketio.AsyncServer` that drops a packet it cannot make sense of (an event
    that asked for an ack gets an empty one)."""

    def __init__(self, *args: Any, frames_per_s: float | None = None, **kwargs: Any) -> None:
        """`frames_per_s`: a websocket's frames a second (None: no bound): pings
        past it unanswered, far past it the session ended (`_CheckedWebSocket.wait`)."""
        super().__init__(*args, **kwargs)
        self.packet_class = _Packet
        self.eio.frames_per_s = frames_per_s

    def _engineio_server_class(self) -> type:
        return EngineIOServer

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        pending = self._binary_packet
        if isinstance(data, str) and len(data) > MAX_PACKET_CHARS:
            await self._too_long(eio_sid, data)
            return
        if eio_sid in pending and not isinstance(data, bytes):
            # Attachments come as binary frames: a text packet means the client
            # will not send them; what it sends now is read as itself.
            await self._refuse_pending(eio_sid, "a binary packet without its attachments")
        elif eio_sid in pending:
            # A packet and its attachments are one packet: bounded as one (LIMITS.md),
            # not each frame alone (a packet announcing 100,000 attachments of 1 MiB
            # held them all until its socket closed).
            held = sum(map(len, pending[eio_sid].attachments)) + len(data)
            if held > self.eio.max_http_buffer_size:
                await self._refuse_pending(eio_sid, "its attachments past the packet bound")
                return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            # Whatever was half-assembled from this client is forgotten too.
            pending.pop(eio_sid, None)
            log.debug("socket.io packet refused: %s", type(exc).__name__)
            return
        awaiting = pending.get(eio_sid)
        if awaiting is not None and not 0 < awaiting.attachment_count <= MAX_ATTACHMENTS:
            # A binary packet that announces no attachment would wait for ever; one
            # that announces more than any event of ours carries is refused at once.
            await self._refuse_pending(eio_sid, f"{awaiting.attachment_count} attachments")

    async def _refuse_pending(self, eio_sid: str, why: str) -> None:
        """The binary packet awaiting its attachments forgotten; an event that asked
        for an ack gets an empty one, as any event refused (its callback would
        wait for ever)."""
        refused = self._binary_packet.pop(eio_sid)
        log.debug("socket.io packet refused: %s", why)
        if refused.packet_type == socketio.packet.BINARY_EVENT and refused.id is not None:
            ack = self.packet_class(
                socketio.packet.ACK, namespace=refused.namespace or "/", data=[], id=refused.id
            )
            await self._send_packet(eio_sid, ack)

    async def _too_long(self, eio_sid: str, data: str) -> None:
        """A packet past MAX_PACKET_CHARS, not decoded: an event that asked for an
        ack is told, in its ack (as `_too_fast`); anything else is dropped."""
        if eio_sid in self._binary_packet:
            await self._refuse_pending(eio_sid, "a binary packet without its attachments")
        head = _HEAD.match(data)
        log.debug("socket.io packet refused: %d characters", len(data))
        if head is None or head["id"] is None or len(head["id"]) > 15:
            return
        if head["type"] not in ("2", "5"):  # EVENT, BINARY_EVENT
            return
        message = (
            f"A Socket.IO event is at most {MAX_PACKET_CHARS} characters; this one was dropped"
        )
        error = {"error": {"code": "too_large", "message": message}}
        ack = self.packet_class(
            socketio.packet.ACK, namespace=head["nsp"] or "/", data=[error], id=int(head["id"])
        )
        await self._send_packet(eio_sid, ack)

    async def _handle_connect(self, eio_sid: str, namespace: Any, data: Any) -> None:
        # A second CONNECT on one Engine.IO session would make a second Socket.IO
        # session, the first never disconnected (its seat and outbox kept for ever).
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:
            raise ValueError("connected already")
        await super()._handle_connect(eio_sid, namespace, data)
        _shed_headers(self.environ.get(eio_sid))

    async def _handle_event(self, eio_sid: str, namespace: Any, id: Any, data: Any) -> None:
        named = isinstance(data, list) and bool(data) and isinstance(data[0], str)
        if named and data[0] not in RESERVED:
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        if id is not None:
            ack = self.packet_class(socketio.packet.ACK, namespace=namespace, data=[], id=id)
            await self._send_packet(eio_sid, ack)
        raise ValueError("an event names itself first, by a name not reserved")
