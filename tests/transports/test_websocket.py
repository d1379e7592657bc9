"""The raw WebSocket transport itself, on the real app served in-process, with an
endpoint of the test's own (the flavours' endpoints are tested in tests/api):
a bug in an endpoint is 1011, a client that stops reading is dropped (1013),
a refused origin is 403 and a request without Upgrade is 426; an open socket
keeps no frame of the middlewares that have nothing to do after its handshake."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web

from gateway.app import build_app
from gateway.errors import GatewayError
from gateway.events import Event, TextDelta
from gateway.settings import Settings
from gateway.transports.websocket import Connection, serve
from tests.gatewayproc import SECRET, make_token, served_in_process


class Echo:
    """Sends each frame back; "boom" is a bug; "flood N" publishes N big deltas to itself."""

    def refused(self, error: GatewayError) -> list[str]:
        return [json.dumps({"refused": error.code})]

    async def opened(self, conn: Connection) -> None:
        await conn.send(json.dumps({"hello": conn.user_id}))

    async def received(self, conn: Connection, text: str) -> None:
        if text == "boom":
            raise RuntimeError("a bug")
        if text.startswith("flood "):
            for index in range(int(text.split()[1])):
                conn.publish([conn.room], TextDelta("c", f"m{index}", index, "x" * 4096))
            return
        await conn.send(text)

    def failed(self, error: GatewayError) -> list[str]:
        return [json.dumps({"failed": error.code})]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return [json.dumps({"text": getattr(event, "text", "")})]

    async def closed(self, conn: Connection) -> None:
        return None


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

    app.router.add_get("/test/echo", echo)
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
    # A small receive window, and nothing read after the greeting: the writer
    # blocks, the outbox (8 events, 64 KiB) overflows, the connection is cut.
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
    # One masked text frame (RFC 6455 §5.2): "flood 200", 200 deltas of 4 KiB.
    payload = b"flood 200"
    writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
    await writer.drain()
    await asyncio.sleep(1.0)
    # Now read: whatever was buffered, then the end of the connection.
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
