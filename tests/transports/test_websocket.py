"""The raw WebSocket transport itself, on the real app served in-process, with an
endpoint of the test's own (the flavours' endpoints are tested in tests/api):
a bug in an endpoint is 1011, a client that stops reading is dropped (1013),
a refused origin is 403 and a request without Upgrade is 426; an open socket
keeps no frame of the middlewares that have nothing to do after its handshake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
import websockets
from aiohttp import web

from gateway.app import build_app
from gateway.errors import GatewayError
from gateway.events import Event, TextDelta
from gateway.settings import Settings
from gateway.transports.websocket import Connection, Phase, serve
from tests.gatewayproc import SECRET, make_token, served_in_process


class Echo:
    """Sends each frame back; "boom" is a bug; "flood N" publishes N big deltas to
    itself; "burst N" N deltas of one reply, each 1 KiB and numbered; "narrow" makes
    the socket's send buffers small; "status" says how many events went through the
    pump and whether one is running.  A delta "raw:…" is sent as its text, bare; a
    delta "bug" fails to encode."""

    def refused(self, error: GatewayError) -> list[str]:
        return [json.dumps({"refused": error.code})]

    async def opened(self, conn: Connection) -> None:
        await conn.join(conn.room)
        if early := int(conn.query.get("early", 0)):
            # Events of its rooms while it opens (other tabs' replies, say).
            for index in range(early):
                conn.publish([conn.room], TextDelta("c", f"m{index}", 0, "during-open"))
            await asyncio.sleep(0.05)
        await conn.send(json.dumps({"hello": conn.user_id}))

    async def received(self, conn: Connection, text: str) -> None:
        if text == "boom":
            raise RuntimeError("a bug")
        if text.startswith("flood "):
            # One reply's deltas, 4 KiB each, 4 a loop turn (as a fast model's arrive).
            for index in range(int(text.split()[1])):
                conn.publish([conn.room], TextDelta("c", "flood", index, "x" * 4096))
                if index % 4 == 3:
                    await asyncio.sleep(0)
            return
        if text.startswith("burst "):
            for index in range(int(text.split()[1])):
                conn.publish([conn.room], TextDelta("c", "m", index, delta_text(index)))
            return
        if text.startswith(("raw:", "bug")):
            # "<lone>": a lone surrogate (what a model server may slip in; a client
            # cannot send one: it is not UTF-8).
            conn.publish([conn.room], TextDelta("c", "m", 0, text.replace("<lone>", "\ud800")))
            return
        if text == "narrow":
            # The kernel's send buffer at its least, and the transport's low-water
            # mark 1 KiB: a client that does not read backs the socket up at once.
            transport = conn.request.transport
            assert transport is not None
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            transport.set_write_buffer_limits(high=4096)
            await conn.send("narrowed")
            return
        if text == "status":
            pumped = conn.state.get("pumped", 0)
            await conn.send(json.dumps({"pumped": pumped, "pump": conn.pump is not None}))
            return
        await conn.send(text)

    def failed(self, error: GatewayError) -> list[str]:
        return [json.dumps({"failed": error.code})]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        text = getattr(event, "text", "")
        if conn.pump is not None and asyncio.current_task() is conn.pump:
            conn.state["pumped"] = int(str(conn.state.get("pumped", 0))) + 1
        if text == "bug":
            raise RuntimeError("a bug in an encoder")
        if text.startswith("raw:"):
            return [text]
        return [json.dumps({"text": text})]

    async def closed(self, conn: Connection) -> None:
        return None


class Broken(Echo):
    """Echo whose `opened` fails once it has joined its room (a bug in it, or its
    client gone while it is greeted)."""

    opened_: ClassVar[list[Connection]] = []
    closed_: ClassVar[list[Connection]] = []

    async def opened(self, conn: Connection) -> None:
        await conn.join(conn.room)
        Broken.opened_.append(conn)
        if conn.query.get("reset"):
            # What aiohttp raises when the greeting finds its client gone.
            raise ConnectionResetError("Cannot write to closing transport")
        raise RuntimeError("a bug in opened")

    async def closed(self, conn: Connection) -> None:
        Broken.closed_.append(conn)


@pytest.fixture
async def app_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(
        data_dir=tmp_path,
        secret_key=SECRET,
        cors_allow_origin=["https://chat.example.com"],
        outbox_max_events=8,
        outbox_max_chars=64 * 1024,
    )
    app = build_app(settings)

    async def echo(request: web.Request) -> web.StreamResponse:
        return await serve(request, Echo(), flavour="echo")

    async def watched(request: web.Request) -> web.StreamResponse:
        return await serve(request, Watched(), flavour="echo")

    async def broken(request: web.Request) -> web.StreamResponse:
        return await serve(request, Broken(), flavour="echo")

    app.router.add_get("/test/echo", echo)
    app.router.add_get("/test/broken", broken)
    app.router.add_get("/test/watched", watched)
    async with served_in_process(app) as url:
        yield url


async def test_frames_go_both_ways_and_a_bad_token_is_refused(app_url: str) -> None:
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{app_url}/test/echo?token={token}") as ws:
            assert await ws.receive_json() == {"hello": "echo-user"}
            await ws.send_str("ping?")
            assert await ws.receive_str() == "ping?"
            await ws.send_bytes(b"\x00")
            assert await ws.receive_json() == {"failed": "bad_request"}
        async with session.ws_connect(f"{app_url}/test/echo?token=nope") as ws:
            assert await ws.receive_json() == {"refused": "invalid_token"}
            closed = await ws.receive()
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1008


def running_inside() -> list[str]:
    """The names of the functions the caller runs inside, innermost first."""
    names, frame = [], sys._getframe(1)
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


class Watched(Echo):
    """Echo that notes what its connection runs inside once open."""

    chain: ClassVar[list[str]] = []

    async def opened(self, conn: Connection) -> None:
        Watched.chain = running_inside()
        await super().opened(conn)


async def test_an_open_socket_keeps_no_frame_of_a_middleware_done_with_it(app_url: str) -> None:
    # The request id and the error middleware wrap the socket's life; the proxy
    # headers, CORS, the body deadline and the cookie guard act on the handshake
    # only and hand on the handler's own awaitable (each frame kept ~0.5 KB a socket).
    token = make_token("echo-user")
    headers = {"Origin": "https://chat.example.com", "X-Forwarded-For": "203.0.113.9"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"{app_url}/test/watched?token={token}", headers=headers
        ) as ws:
            assert await ws.receive_json() == {"hello": "echo-user"}
    chain = Watched.chain
    assert {"request_id", "errors", "watched", "opened"} <= set(chain), chain
    done_with = {"forwarded", "cors", "granted", "deadline", "timed", "cross_site"}
    assert not done_with & set(chain), chain


async def test_a_bug_in_an_endpoint_is_an_error_frame_and_close_1011(app_url: str) -> None:
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{app_url}/test/echo?token={token}") as ws:
            await ws.receive_json()
            await ws.send_str("boom")
            assert await ws.receive_json() == {"failed": "internal_error"}
            closed = await ws.receive()
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1011


async def test_a_client_that_stops_reading_is_dropped(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token("echo-user")
    # Small kernel buffers both ways ("narrow"), and nothing read after the
    # greeting while one reply of 800 KiB is published: once they and the
    # socket's own buffer are full, the outbox fills behind the pump (merging:
    # one reply), passes its 64 KiB, and the connection is cut.
    host, port = app_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1024)
    raw = writer.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        (
            f"GET /test/echo?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await reader.readuntil(b"}")  # the greeting
    # Masked text frames (RFC 6455 §5.2): "narrow", then "flood 200", 200 deltas of 4 KiB.
    for payload in (b"narrow", b"flood 200"):
        writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        await writer.drain()
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    # Now read (with a wide window: a 4 KiB one is slow): whatever was buffered,
    # then the end of the connection.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    received = 0
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        received += len(chunk)
    writer.close()
    assert received < 200 * 4096  # not everything: the rest was never queued
    assert "slow websocket dropped" in caplog.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({}, 426),
    ],
)
async def test_handshake_refusals(app_url: str, headers: dict[str, str], status: int) -> None:
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        if status == 403:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{app_url}/test/echo?token={token}", headers=headers)
            assert refused.value.status == 403
        else:
            async with session.get(f"{app_url}/test/echo?token={token}") as resp:
                body: dict[str, Any] = await resp.json()
                assert resp.status == 426
                assert "proxy_set_header Upgrade $http_upgrade" in body["detail"]


def writer_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of this loop running a raw WebSocket's writer (the pump)."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Delivering._pump"
    ]


def delta_text(index: int) -> str:
    """The text of the "burst" command's delta `index` (1 KiB)."""
    return f"{index:04d}" + "x" * 1020


@contextlib.asynccontextmanager
async def echo_socket(app_url: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A socket to the Echo endpoint, past its greeting."""
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{app_url}/test/echo?token={token}") as ws:
            assert await ws.receive_json() == {"hello": "echo-user"}
            yield ws


@contextlib.asynccontextmanager
async def narrowed_socket(
    app_url: str,
) -> AsyncIterator[tuple[websockets.ClientConnection, socket.socket]]:
    """A socket to the Echo endpoint with small kernel buffers both ways ("narrow"),
    past its greeting: a client that reads nothing backs it up at once."""
    host, port = app_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    url = f"ws://{host}:{port}/test/echo?token={make_token('echo-user')}"
    async with websockets.connect(url, sock=sock, max_queue=1, compression=None) as ws:
        assert json.loads(await ws.recv()) == {"hello": "echo-user"}
        await ws.send("narrow")
        assert await ws.recv() == "narrowed"
        yield ws, sock


async def test_an_idle_socket_holds_no_writer_task(app_url: str) -> None:
    async with echo_socket(app_url) as ws:
        await ws.send_str("ping?")
        assert await ws.receive_str() == "ping?"
        assert writer_tasks() == []


async def test_events_go_out_from_the_publisher_without_a_task(app_url: str) -> None:
    # A client that reads: each event's frames are written in the turn it is published.
    async with echo_socket(app_url) as ws:
        await ws.send_str("burst 5")
        assert [(await ws.receive_json())["text"] for _ in range(5)] == [
            delta_text(index) for index in range(5)
        ]
        await ws.send_str("status")
        assert await ws.receive_json() == {"pumped": 0, "pump": False}
        assert writer_tasks() == []


async def test_a_backed_up_socket_gets_a_pump_that_ends_once_it_is_drained(
    app_url: str,
) -> None:
    # A client that reads nothing: a first burst of one reply (60 KiB, one loop
    # turn) goes to the socket and backs it up; a second (20 KiB) queues in the
    # outbox (merged once it is full) and the pump writes it as the client reads;
    # then the pump is gone.  The client gets every delta, in order.
    async with narrowed_socket(app_url) as (ws, _):
        await ws.send("burst 60")
        await asyncio.sleep(0.2)  # written, and the socket backed up
        await ws.send("burst 20")
        await asyncio.sleep(0.2)
        expected = "".join(delta_text(index) for index in [*range(60), *range(20)])
        text = ""
        while len(text) < len(expected):
            text += json.loads(await asyncio.wait_for(ws.recv(), 10))["text"]
        assert text == expected
        await ws.send("status")
        status = json.loads(await ws.recv())
        assert status["pumped"] > 0, status
        assert status["pump"] is False
        assert writer_tasks() == []


async def test_a_burst_in_one_loop_turn_is_merged_and_written_at_its_end(app_url: str) -> None:
    # 50 deltas of one reply in one turn: the outbox's rules hold (8 events at most,
    # then merged; 64 KiB of text here), and what it holds is written at the turn's
    # end, without a task.
    async with echo_socket(app_url) as ws:
        await ws.send_str("burst 50")
        texts: list[str] = []
        while sum(map(len, texts)) < 50 * 1024:
            texts.append((await ws.receive_json())["text"])
        assert "".join(texts) == "".join(delta_text(index) for index in range(50))
        assert len(texts) <= 8
        await ws.send_str("status")
        assert await ws.receive_json() == {"pumped": 0, "pump": False}


async def test_what_the_rooms_bring_while_a_socket_opens_follows_its_greeting(
    app_url: str,
) -> None:
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{app_url}/test/echo?early=1&token={token}") as ws:
            assert await ws.receive_json() == {"hello": "echo-user"}
            assert await ws.receive_json() == {"text": "during-open"}
        # More than its outbox holds (8 events of 8 replies: nothing to merge): it
        # opens, and is dropped as a client that fell behind, to reconnect.
        async with session.ws_connect(f"{app_url}/test/echo?early=20&token={token}") as ws:
            assert await ws.receive_json() == {"hello": "echo-user"}
            while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013


async def test_an_encoder_bug_on_the_pump_path_is_logged_and_closes_1011(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with narrowed_socket(app_url) as (ws, _):
        await ws.send("burst 60")
        await asyncio.sleep(0.2)  # the socket backed up: the next event goes to the pump
        await ws.send("bug")
        await asyncio.sleep(0.2)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "websocket delivery failed" in caplog.text
    assert "in _pump" in caplog.text  # the pump's, not a flush's


async def test_a_client_reset_while_its_pump_waits_is_not_an_error(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A backed-up client whose pump waits for it to read, then resets (a phone
    # dropping off): aiohttp fails the wait with ConnectionError("Connection lost").
    async with narrowed_socket(app_url) as (ws, sock):
        for _ in range(6):  # past aiohttp's 256 KiB between its checks: the pump waits
            await ws.send("burst 50")
            await asyncio.sleep(0.1)
        assert writer_tasks(), "the pump is waiting"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # RST
        await asyncio.sleep(0.5)
    assert writer_tasks() == []
    assert "websocket delivery failed" not in caplog.text


async def test_the_fast_path_sends_what_utf_8_can_carry_and_survives_an_encoder_bug(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_socket(app_url) as ws:
        await ws.send_str("raw:a<lone>b")
        assert await ws.receive_str() == "raw:ab"
    async with echo_socket(app_url) as ws:
        await ws.send_str("bug")
        closed = await ws.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1011
        assert "websocket delivery failed" in caplog.text
    async with echo_socket(app_url) as ws:  # the publisher and the app go on
        await ws.send_str("ping?")
        assert await ws.receive_str() == "ping?"


@contextlib.asynccontextmanager
async def broken_socket(
    app_url: str, query: str = ""
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A socket to the Broken endpoint (whose `opened` fails)."""
    Broken.opened_.clear()
    Broken.closed_.clear()
    token = make_token("echo-user")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{app_url}/test/broken?token={token}{query}") as ws:
            yield ws


async def left_nothing_behind() -> None:
    """The Broken endpoint's connection ended, its `closed` run, out of every room."""
    for _ in range(100):
        if Broken.closed_:
            break
        await asyncio.sleep(0.02)
    [conn] = Broken.opened_
    assert Broken.closed_ == [conn] and conn.phase is Phase.CLOSED
    assert conn.outbox is not None and conn.outbox.closed and conn.outbox.rooms == ()


async def test_an_endpoint_that_fails_while_opening_leaves_nothing_behind(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, only a GatewayError undid what `opened` had set up: any other failure
    # (its client reset while greeted, a bug) left the outbox in its rooms (and, for
    # Nadoo, the seat counted by /ws/stats) for good, and `closed` never ran; a bug
    # reached the error middleware, whose HTTP 500 was written into the upgraded
    # stream (the client read a frame with reserved bits set).
    async with broken_socket(app_url) as ws:
        assert await ws.receive_json() == {"failed": "internal_error"}
        closed = await ws.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1011
    assert "websocket endpoint failed" in caplog.text and "unhandled error" not in caplog.text
    await left_nothing_behind()


async def test_a_client_gone_while_greeted_leaves_nothing_behind_and_is_no_error(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with broken_socket(app_url, "&reset=1") as ws:
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await left_nothing_behind()
    assert "Traceback" not in caplog.text and "unhandled error" not in caplog.text
