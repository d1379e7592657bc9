"""The raw WebSockets' pings (`transports/websocket_pings.py`): one timer for every
socket, a client that answers nothing between two pings cut, the client's own
pings answered.  A real gateway in this process (Nadoo's chat socket), its ping
interval shortened once it has started, and aiohttp's client with its own
answering of pings off, so each test decides what the client answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import websockets
from aiohttp import WSMsgType, web

from gateway.app import build_app
from gateway.errors import GatewayError
from gateway.events import Event
from gateway.settings import Settings
from gateway.transports.websocket import Connection, serve
from gateway.transports.websocket_pings import PINGS, SWEEP_AFTER, Pings
from tests.gatewayproc import SECRET, make_token, served_in_process

INTERVAL_S = 0.2


@dataclass
class Served:
    url: str
    pings: Pings
    compressed: bool = False


class Slow:
    """A raw WebSocket endpoint whose every text frame takes `SLOW_S` to handle (a
    store that stalls): meanwhile its read loop takes nothing from the client;
    "flood" is answered with more than a client that stops reading can hold."""

    def refused(self, error: GatewayError) -> list[str]:
        return [error.code]

    async def opened(self, conn: Connection) -> None:
        await conn.send('{"type": "connected"}')

    async def received(self, conn: Connection, text: str) -> None:
        if text == "flood":
            # 16 MiB that no compression makes smaller, sent by a task of its own
            # (the read loop goes back to reading).
            FLOODS.add(asyncio.ensure_future(flood(conn)))
            return
        await asyncio.sleep(SLOW_S)
        await conn.send("handled")

    def failed(self, error: GatewayError) -> list[str]:
        return [error.code]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return []

    async def closed(self, conn: Connection) -> None:
        return None


SLOW_S = 4 * INTERVAL_S
FLOODS: set[asyncio.Future[None]] = set()


async def flood(conn: Connection) -> None:
    with contextlib.suppress(ConnectionError):
        for _ in range(256):
            await conn.send(UNCOMPRESSIBLE)


UNCOMPRESSIBLE = secrets.token_urlsafe(49152)  # 64 KiB of text


async def slow(request: web.Request) -> web.StreamResponse:
    return await serve(request, Slow(), flavour="slow")


@pytest.fixture(params=[False, True], ids=["plain", "compressed"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """The gateway, with permessage-deflate on (`GATEWAY_WEBSOCKET_COMPRESSION`, and
    the client asking for it) or off: control frames are never compressed."""
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, websocket_compression=request.param)
    app = build_app(settings)
    app.router.add_get("/ws/slow", slow)
    async with served_in_process(app) as url:
        app[PINGS].interval_s = INTERVAL_S  # (no base path: the gateway's own app)
        yield Served(url.replace("http", "ws", 1), app[PINGS], request.param)


async def opened(
    session: aiohttp.ClientSession, served: Served, user: str, path: str = ""
) -> aiohttp.ClientWebSocketResponse:
    path = path or f"/ws/chat/s-{user}"
    ws = await session.ws_connect(
        f"{served.url}{path}?token={make_token(user)}",
        autoping=False,
        compress=15 if served.compressed else 0,
    )
    assert ws.compress == (15 if served.compressed else 0)  # what was agreed
    first = await ws.receive(timeout=5)
    assert first.type is WSMsgType.TEXT and '"connected"' in first.data
    return ws


async def test_a_client_that_answers_is_pinged_every_interval_and_kept(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await opened(session, served, "answers")
        pings, began = 0, time.monotonic()
        while time.monotonic() - began < 6 * INTERVAL_S:
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.PING, msg
            pings += 1
            await ws.pong(msg.data)
        assert pings >= 4 and not ws.closed
        assert len(served.pings) == 1
        await ws.close()


async def test_a_client_that_answers_nothing_is_cut(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """No pong, no frame: cut at its second turn, one to two intervals after it was
    last heard from; it leaves the queue."""
    caplog.set_level(logging.INFO, logger="gateway.transports.websocket_pings")
    async with aiohttp.ClientSession() as session:
        ws = await opened(session, served, "silent")
        began = time.monotonic()
        first = await ws.receive(timeout=5)
        assert first.type is WSMsgType.PING  # not answered
        ended = await ws.receive(timeout=5)
        assert ended.type in (WSMsgType.CLOSED, WSMsgType.ERROR), ended
        took = time.monotonic() - began
        assert INTERVAL_S / 2 <= took < 2 * INTERVAL_S + 1.0, took
    assert "its last ping was not answered" in caplog.text
    for _ in range(50):
        if len(served.pings) == 0:
            break
        await asyncio.sleep(INTERVAL_S / 4)
    assert len(served.pings) == 0


async def test_a_client_heard_from_by_its_frames_is_kept_without_pongs(served: Served) -> None:
    """A client that never answers a ping but sends frames (Nadoo's `ping` message,
    answered `pong`) is alive: it is heard from between every two pings."""
    async with aiohttp.ClientSession() as session:
        ws = await opened(session, served, "talks")
        pings, began = 0, time.monotonic()
        while time.monotonic() - began < 6 * INTERVAL_S:
            await ws.send_str('{"type": "ping"}')
            msg = await ws.receive(timeout=5)
            if msg.type is WSMsgType.PING:
                pings += 1  # not answered
                continue
            assert msg.type is WSMsgType.TEXT and "pong" in msg.data, msg
            await asyncio.sleep(INTERVAL_S / 4)
        assert pings >= 3 and not ws.closed
        await ws.close()


async def test_the_clients_own_ping_is_answered_with_its_payload(served: Served) -> None:
    served.pings.interval_s = 60.0  # none of the gateway's own in the way
    async with aiohttp.ClientSession() as session:
        ws = await opened(session, served, "asks")
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.PONG and msg.data == b"are you there"
        await ws.close()


async def test_pings_stop_with_the_application(tmp_path: Path) -> None:
    app = build_app(Settings(data_dir=tmp_path, secret_key=SECRET))
    async with served_in_process(app) as url, aiohttp.ClientSession() as session:
        pings = app[PINGS]
        await opened(session, Served(url.replace("http", "ws", 1), pings), "stays")
        assert len(pings) == 1
    assert len(pings) == 0 and pings._timer is None


async def test_a_client_whose_pong_waits_behind_a_slow_frame_is_kept(served: Served) -> None:
    """Its read loop busy with a frame for longer than two intervals (the pongs the
    client sent meanwhile wait behind it): not taken for gone."""
    async with aiohttp.ClientSession() as session:
        ws = await opened(session, served, "waits", path="/ws/slow")
        await ws.send_str("take your time")
        answered, pings = False, 0
        while not answered:
            msg = await ws.receive(timeout=5)
            if msg.type is WSMsgType.PING:
                pings += 1
                await ws.pong(msg.data)
                continue
            assert msg.type is WSMsgType.TEXT and msg.data == "handled", msg
            answered = True
        assert pings >= 2 and not ws.closed
        await ws.close()


async def test_closed_connections_do_not_stay_in_the_queue(served: Served) -> None:
    """Connections that open and close by the hundred (reconnecting clients) leave
    the queue long before their turn would come."""
    served.pings.interval_s = 60.0  # no turn comes during the test
    async with aiohttp.ClientSession() as session:
        for index in range(3 * SWEEP_AFTER):
            ws = await opened(session, served, f"churn-{index}")
            await ws.close()
        await asyncio.sleep(0.1)  # the last close reaches the server
    assert len(served.pings) <= SWEEP_AFTER + 1


async def test_a_client_that_stops_reading_is_cut(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """It asks for a flood and stops reading: the socket backs up, the ping waits
    behind the flood and is never answered; cut one to two intervals on, as a
    silent client is, and nothing of it is left."""
    caplog.set_level(logging.INFO, logger="gateway.transports.websocket_pings")
    token = make_token("stuck")
    url = f"{served.url}/ws/slow?token={token}"
    compression = "deflate" if served.compressed else None
    async with websockets.connect(
        url, max_queue=1, compression=compression, close_timeout=0.5
    ) as ws:
        await ws.recv()  # connected
        await ws.send("flood")
        said = "its last ping was not answered"
        for _ in range(100):
            if said in caplog.text:
                break
            await asyncio.sleep(INTERVAL_S / 4)
        assert said in caplog.text
    for _ in range(50):
        if len(served.pings) == 0:
            break
        await asyncio.sleep(INTERVAL_S / 4)
    assert len(served.pings) == 0
