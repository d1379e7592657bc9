"""What an idle Socket.IO socket holds, on the real app served in-process (so the
test sees the server's own tasks): no task asleep for its next ping (pings still
come every interval, and a client that stops answering them is closed), no pump
task until its events back up (and none again once they have gone), and no copy
of its handshake's headers once it is connected; and its writer waits for packets
with no timer of its own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import engineio
import pytest
from aiohttp import web

from gateway.app import build_app
from gateway.events import ReplyStarted, TextDelta
from gateway.settings import Settings
from gateway.transports import socketio as transport
from gateway.transports import socketio_queue as engine
from gateway.transports.socketio_engine import _Socket
from gateway.transports.socketio_guard import KEPT_ENVIRON, GuardedServer
from tests.gatewayproc import SECRET, make_token, served_in_process

PING_S = 1  # Engine.IO announces whole seconds


@pytest.fixture
async def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[web.Application, str]]:
    monkeypatch.setattr(transport, "PING_INTERVAL_S", PING_S)
    monkeypatch.setattr(transport, "PING_TIMEOUT_S", PING_S)
    app = build_app(Settings(data_dir=tmp_path, secret_key=SECRET))
    async with served_in_process(app) as base:
        yield app, base.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"


async def connected(session: aiohttp.ClientSession, url: str, user: str) -> Any:
    """A Socket.IO websocket, its CONNECT acked."""
    ws = await session.ws_connect(url)
    opened = await ws.receive_str()
    assert opened.startswith("0") and json.loads(opened[1:])["pingInterval"] == PING_S * 1000
    await ws.send_str("40" + json.dumps({"token": make_token(user)}))
    assert (await ws.receive_str()).startswith("40")
    return ws


async def until(condition: Any) -> None:
    """The server's side of a step the client has its answer to already (Socket.IO
    acks a CONNECT before its handler has run)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server did not get there in 2 s")


@asynccontextmanager
async def one_joined(
    served: tuple[web.Application, str], user: str
) -> AsyncIterator[tuple[transport.SocketIOTransport, transport.Socket, Any]]:
    """The app's only socket, connected and joined to its user's room on the server."""
    app, url = served
    sockets = app[transport.SOCKETIO]
    async with aiohttp.ClientSession() as session:
        ws = await connected(session, url, user)
        (conn,) = sockets._conns.values()
        await until(lambda: conn.opened)
        yield sockets, conn, ws


def server_tasks() -> list[str]:
    return [task.get_coro().__qualname__ for task in asyncio.all_tasks()]  # type: ignore[union-attr]


async def test_an_idle_socket_is_pinged_by_no_task_of_its_own_and_closed_when_silent(
    served: tuple[web.Application, str],
) -> None:
    _, url = served
    async with aiohttp.ClientSession() as session:
        sockets = [await connected(session, url, f"idle-{index}") for index in range(3)]
        tasks = server_tasks()
        assert not [name for name in tasks if name.endswith(("_send_ping", "_pump"))], tasks
        # Every socket is pinged each interval, and answers.
        pinged: list[list[float]] = [[] for _ in sockets]
        for _ in range(2):
            for ws, times in zip(sockets, pinged, strict=True):
                assert await asyncio.wait_for(ws.receive_str(), PING_S * 3) == "2"
                times.append(time.monotonic())
                await ws.send_str("3")
        for first, second in pinged:
            assert PING_S * 0.8 <= second - first <= PING_S * 2.5, (first, second)
        # One stops answering: closed once its ping timeout has passed.
        silent = sockets[0]
        started = time.monotonic()
        assert await asyncio.wait_for(silent.receive_str(), PING_S * 3) == "2"
        closed = await asyncio.wait_for(silent.receive(), PING_S * 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert time.monotonic() - started <= PING_S * 4
        for ws in sockets:
            await ws.close()


async def test_a_connected_socket_keeps_no_copy_of_its_handshake_headers(
    served: tuple[web.Application, str],
) -> None:
    async with one_joined(served, "shed") as (sockets, _, ws):
        environs = list(sockets.sio.environ.values())
        assert environs and all(set(environ) <= set(KEPT_ENVIRON) for environ in environs)
        assert "aiohttp.request" in environs[0]
        # The socket works on: an event is acked (a chat that is not the user's).
        await ws.send_str('421["events:chat",{"chat_id":"nope","data":{"type":"join"}}]')
        assert await ws.receive_str() == "431[false]"
        await ws.close()


async def test_a_pump_is_made_when_events_back_up_and_ends_once_they_are_sent(
    served: tuple[web.Application, str],
) -> None:
    async with one_joined(served, "backed-up") as (_, conn, ws):
        assert conn.pump is None and conn.outbox is not None
        events: list[Any] = [ReplyStarted("c1", "m1", 0, "backed-up", None, "model", 1.0)]
        events += [TextDelta("c1", "m1", seq, f"w{seq} ") for seq in range(1, 40)]
        # Engine.IO's queue filled in one go (its writer runs only once this awaits),
        # then the rest through the outbox, as the rooms hand them on.
        for event in events[: engine.MAX_QUEUED_PACKETS]:
            engine.enqueue(conn.eio_socket, event)
        for event in events[engine.MAX_QUEUED_PACKETS :]:
            conn.outbox.put(event)
        assert conn.pump is not None and len(conn.outbox) > 0
        texts = []
        while len(texts) < len(events) - 1:
            packet = await asyncio.wait_for(ws.receive_str(), 5)
            if packet == "2":
                await ws.send_str("3")
                continue
            envelope = json.loads(packet.removeprefix("42"))[1]
            if envelope["data"]["type"] == "chat:message:delta":
                texts.append(envelope["data"]["data"]["content"])
        assert "".join(texts) == "".join(f"w{seq} " for seq in range(1, 40))
        await until(lambda: conn.pump is None)
        assert "Delivery._pump" not in server_tasks()
        # The next event takes the fast path again.
        conn.outbox.put(TextDelta("c1", "m1", 40, "last"))
        assert conn.pump is None and len(conn.outbox) == 0
        await ws.close()


async def test_a_poll_takes_what_is_queued_up_to_the_end_and_gives_up_as_engine_io() -> None:
    # The writer's (or a long poll's) wait for packets: no timer and no task of
    # its own for each packet; what it returns is what Engine.IO's own returns.
    server = GuardedServer(async_mode="aiohttp").eio
    sock = _Socket(server, "sid")
    sock.queue.put_nowait("a")
    sock.queue.put_nowait("b")
    assert await sock.poll() == ["a", "b"]
    waiting = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0)
    sock.queue.put_nowait("c")
    sock.queue.put_nowait(None)  # the socket closes
    assert await waiting == ["c"]
    assert await sock.poll() == []  # the end, kept for the next poll
    waiting = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0)
    waiting.cancel()  # a long poll whose client left
    with pytest.raises(engineio.exceptions.QueueEmpty):
        await waiting
    await asyncio.wait_for(sock.queue.join(), 1)  # every packet taken is done


async def test_a_long_poll_on_a_session_that_times_out_ends_with_it(
    served: tuple[web.Application, str],
) -> None:
    # A ping timeout closes the session without queuing anything: the long poll
    # waiting on it must end all the same (it once had a timeout of its own).
    _, url = served
    polling = url.replace("ws", "http", 1).replace("websocket", "polling")
    async with aiohttp.ClientSession() as session:
        async with session.get(polling) as resp:
            sid = json.loads((await resp.text())[1:])["sid"]
        async with session.get(f"{polling}&sid={sid}") as resp:
            assert await resp.text() == "2"  # a ping, never answered
        started = time.monotonic()
        async with session.get(
            f"{polling}&sid={sid}", timeout=aiohttp.ClientTimeout(total=PING_S * 10)
        ) as resp:
            await resp.read()
        assert time.monotonic() - started <= PING_S * 5
        async with session.get(f"{polling}&sid={sid}") as resp:
            assert resp.status == 400  # the session is gone


async def test_a_poll_cancelled_as_it_is_woken_leaves_the_packet_queued() -> None:
    sock = _Socket(GuardedServer(async_mode="aiohttp").eio, "sid")
    waiting = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0)
    sock.queue.put_nowait("p")  # wakes the waiting poll...
    waiting.cancel()  # ...whose client leaves in the same turn
    with pytest.raises(engineio.exceptions.QueueEmpty):
        await waiting
    assert await sock.poll() == ["p"]
    await asyncio.wait_for(sock.queue.join(), 1)
