"""What probes of the socket transports found (2026-12-07, second round), each on a real
gateway with raw clients, each with what the code did before:

    a WebSocket handshake whose client resets the connection at once (no token needed)
        was: "unhandled error" and a traceback per handshake, an access line of 500
        now: nothing logged but the access line, 499 ("client closed request")
    a Nadoo socket whose token expires while its client reads nothing
        was: the close waited for ever on the client; the read loop went on, and a
             chat frame sent after `exp` was carried out (a reply asked, stored)
        now: nothing read past `exp` is carried out; the connection is cut
             CLOSE_TIMEOUT_S after the refusal could not be written
    a Socket.IO packet announcing 100,000 binary attachments, then 1 MB frames
        was: every frame held until the socket closed (600 MB on one anonymous socket)
        now: past MAX_ATTACHMENTS announced, or past the packet bound in all, dropped
    a long-polling client behind on a fast reply
        was: one poll's response carried every queued packet (104 seen); python-
             socketio's client refuses more than 16 and drops its session
        now: at most 16 a response; the rest waits in the queue and the outbox
    two replies of one user under one message id, in two chats, at once
        was: both kept and followed under (user, id): chat 1's stream and resumes
             carried chat 2's deltas and ended with chat 2's end
        now: the second is refused 409 until the first has ended (on this replica)
    a Nadoo or RAGFlow question naming a model whose server is down
        was: answered by the first model listed (the demo), as if it were that model
        now: the flavour's error: the model server is unreachable
    a second Nadoo `resume` of a reply the socket follows already, from an earlier seq
        was: the encoder primed again from that seq: `index` began again (28 → 2)
        now: nothing primed: `index` goes on (RAGFlow's running text likewise)
    an upgrade from long-polling whose connection is cut after its probe
        was: the whole session closed ("Session ID unknown" for the polls)
        now: the polling session goes on, as Engine.IO specifies
    a long-polling POST sent chunked (no Content-Length)
        was: read as empty (Engine.IO reads by the length) and answered 200: its
             packets lost without a word
        now: 411, saying a length is needed
    Engine.IO's first of each kind of bad request (bad transport, bad sid, bad JSONP
    index…) in a process
        was: an ERROR line (an operator's alert on ERROR fired on a client's fault)
        now: INFO, as every later one was already
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from typing import Any

import aiohttp
import socketio
import websockets

from tests.api.test_nadoo_ws import chat_client, ws_url
from tests.api.test_nadoo_ws import user as nadoo_user
from tests.clients import PySocket, ended, post_json, text_of, turn_body
from tests.fakes.upstream import FakeUpstream, free_port, reply_text
from tests.gatewayproc import GatewayProcess, make_token

QUICK_S = 5.0


def _handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked(text: str) -> bytes:
    """A client's text frame."""
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    head = bytes([0x81])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _reset_at_once(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_handshake(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_a_handshake_its_client_cuts_off_is_no_error_on_any_socket_route(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    token = make_token("cut-off-user")
    paths = [
        f"/ws/chat/cut?token={token}",
        f"/api/v1/ws/plugin/debug/x?token={token}",
        "/ws/socket.io/?EIO=4&transport=websocket",
    ]
    for path in paths:
        for _ in range(30):
            await asyncio.to_thread(_reset_at_once, gateway.port, path)
    await asyncio.sleep(0.5)
    logged = gateway.log()[offset:]
    assert gateway.troubles_since(offset) == [], logged[-3000:]
    assert " 500" not in logged
    assert " 499" in logged  # (the handshake was cut in time at least once)


async def test_nothing_a_socket_sends_after_its_token_expired_is_done_and_it_is_cut(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """A client that reads nothing: the refusal cannot be written, so the close
    handshake never ends; the frame it sends after `exp` must not start a reply."""
    user, marker = f"stuck-{os.urandom(3).hex()}", f"AFTER-EXPIRY-{os.urandom(3).hex()}"
    token = make_token(user, ttl_s=3)
    expires = time.time() + 3
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(_handshake(f"/ws/chat/stuck?token={token}"))
        assert sock.recv(12).startswith(b"HTTP/1.1 101")
        flood = {"type": "chat", "content": "fill the pipe", "application_id": "fake-flood"}
        sock.sendall(_masked(json.dumps(flood)))
        await asyncio.sleep(expires - time.time() + 0.5)  # past exp, never reading
        late = {"type": "chat", "content": marker, "application_id": "fake-model"}
        with contextlib.suppress(OSError):  # (a connection already cut: as good)
            sock.sendall(_masked(json.dumps(late)))
        # Cut CLOSE_TIMEOUT_S (2 s) after the refusal: the kernel then reports it closed.
        sock.settimeout(0.2)
        deadline, cut = time.monotonic() + 10, False
        while time.monotonic() < deadline and not cut:
            try:
                cut = sock.recv(65536) == b""
            except TimeoutError:
                await asyncio.sleep(0.1)
            except ConnectionResetError:
                cut = True
        assert cut, "the connection was not cut"
    finally:
        sock.close()
    await asyncio.sleep(0.5)
    assert fake_upstream.requests_for(marker) == []


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def test_a_packet_of_endless_attachments_holds_no_memory(start_gateway: Any) -> None:
    """No token needed: a Socket.IO CONNECT without one is a connected socket too."""
    gateway = start_gateway()
    url = f"ws://127.0.0.1:{gateway.port}/ws/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url, max_size=None) as ws:
        assert str(await ws.recv()).startswith("0")
        await ws.send("40")
        assert str(await ws.recv()).startswith("40")
        chunk = os.urandom(1_000_000)
        # More than MAX_ATTACHMENTS announced: dropped at once.  Then few enough in
        # number, too many bytes in all: dropped at the second frame.  Measured with
        # the frames sent and no text packet yet (a text packet ends a pending one).
        for announced in ("100000", "3"):
            before = _rss_mb(gateway.proc.pid)
            await ws.send("45" + announced + '-["heartbeat",{"_placeholder":true,"num":0}]')
            for _ in range(150):
                await ws.send(chunk)
            await asyncio.sleep(1.0)
            grown = _rss_mb(gateway.proc.pid) - before
            assert grown < 64, f"{grown:.0f} MB held for 150 MB of attachments ({announced})"
        await ws.send('4277["heartbeat",{}]')  # still served: its ack
        while (answer := str(await asyncio.wait_for(ws.recv(), QUICK_S))) == "2":
            await ws.send("3")
        assert answer.startswith("4377"), answer
    assert gateway.troubles_since(0) == []


async def test_a_polling_client_behind_on_a_reply_keeps_its_session(
    gateway: GatewayProcess,
) -> None:
    """python-socketio's client on long-polling, its loop busy for a second at the
    reply's first event: the reply's deltas pile up meanwhile (50 a second)."""
    token = make_token(f"poller-{os.urandom(3).hex()}")
    events: list[dict[str, Any]] = []
    disconnects: list[str] = []
    client = socketio.AsyncClient(reconnection=False)

    @client.on("events")  # type: ignore[untyped-decorator]
    async def on_event(data: dict[str, Any]) -> None:
        if not events:
            time.sleep(1.0)  # noqa: ASYNC251 (blocking is the point)
        events.append(
            {
                "message_id": data["message_id"],
                "type": data["data"]["type"],
                "data": data["data"]["data"],
            }
        )

    @client.on("disconnect")  # type: ignore[untyped-decorator]
    async def on_disconnect(*reason: Any) -> None:
        disconnects.append(repr(reason))

    await client.connect(
        gateway.url, socketio_path="/ws/socket.io", auth={"token": token}, transports=["polling"]
    )
    try:
        sid = client.get_sid()
        assert sid is not None
        body = turn_body(sid, "slowly", model="fake-slow")
        await post_json(f"{gateway.url}/api/chat/completions", token, body)
        deadline = time.monotonic() + 30
        while not any(map(ended, events)) and not disconnects:
            assert time.monotonic() < deadline, f"{len(events)} events in 30 s"
            await asyncio.sleep(0.05)
        assert disconnects == [], f"dropped after {len(events)} events"
        assert text_of(events, body["id"]) == reply_text("fake-slow", [])
    finally:
        await client.disconnect()


async def _opened(http: aiohttp.ClientSession, gateway: GatewayProcess) -> str:
    """The URL of a new Engine.IO long-polling session, not yet connected to Socket.IO."""
    base = f"{gateway.url}/ws/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as resp:
        sid = json.loads((await resp.text())[1:])["sid"]
    return f"{base}&sid={sid}"


async def test_an_upgrade_cut_after_its_probe_leaves_the_polling_session_working(
    gateway: GatewayProcess,
) -> None:
    token = make_token(f"upgrader-{os.urandom(3).hex()}")
    async with aiohttp.ClientSession() as http:
        polling = await _opened(http, gateway)
        async with http.post(polling, data="40" + json.dumps({"token": token})) as resp:
            assert resp.status == 200
        async with http.get(polling) as resp:
            assert (await resp.text()).startswith("40")
        upgrade = polling.replace("http", "ws", 1).replace("=polling", "=websocket")
        ws = await websockets.connect(upgrade)
        await ws.send("2probe")
        assert await ws.recv() == "3probe"
        ws.transport.abort()
        await asyncio.sleep(0.5)
        async with http.post(polling, data='42["heartbeat",{}]') as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(polling, data="4211" + json.dumps(["heartbeat", {}])) as resp:
            assert resp.status == 200
        async with http.get(polling) as resp:
            assert resp.status == 200
            assert "4311" in await resp.text()  # the ack: the session still works


async def test_engineios_first_bad_request_of_each_kind_is_not_an_error_line(
    start_gateway: Any,
) -> None:
    gateway = start_gateway()
    base = f"{gateway.url}/ws/socket.io/?EIO=4"
    async with aiohttp.ClientSession() as http:
        for query in ("&transport=foo", "&transport=polling&j=x", "&transport=polling&sid=nope"):
            async with http.get(base + query) as resp:
                assert resp.status == 400
        async with http.post(base + "&transport=polling", data="40") as resp:
            assert resp.status == 400
    await asyncio.sleep(0.3)
    logged = gateway.log()
    assert gateway.troubles_since(0) == [], logged[-3000:]
    assert "Invalid transport" in logged and "Invalid JSONP index number" in logged


async def test_a_model_named_on_a_server_that_is_down_is_an_error_not_the_demo(
    start_gateway: Any,
) -> None:
    """A Nadoo question for `fake-model`, whose server has never answered: the demo
    model (on by default) answered in its place, as if it were it."""
    gateway = start_gateway({"OPENAI_API_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    _, token = nadoo_user()
    end, text, _ = await chat_client(gateway, token, "hello", application_id="fake-model")
    assert end["type"] == "error" and text == "", (end, text)
    assert "unreachable" in json.dumps(end), end
    # Naming nothing is asking for the default: the demo answers that.
    end, text, _ = await chat_client(gateway, token, "hello")
    assert end["type"] == "response_end" and text, (end, text)


async def test_an_application_id_falls_back_on_a_real_model_while_another_server_is_down(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    """A Nadoo application id is often no model: with one server down and a real
    model listed by another, it is answered by that model, as before."""
    down = f"http://127.0.0.1:{free_port()}/v1"
    gateway = start_gateway({"OPENAI_API_BASE_URLS": f"{fake_upstream.url};{down}"})
    _, token = nadoo_user()
    end, text, _ = await chat_client(gateway, token, "hello", application_id="app-7f3a")
    assert end["type"] == "response_end", end
    assert text.strip() == reply_text("fake-model", [{"role": "user", "content": "hello"}]).strip()


async def test_a_second_resume_of_a_followed_reply_keeps_its_index(
    gateway: GatewayProcess,
) -> None:
    """Nadoo: a socket that follows a reply (resumed once) and asks to resume it again
    from an earlier seq goes on where it was: `index` counts on, no text twice."""
    _, token = nadoo_user()
    async with (
        websockets.connect(ws_url(gateway, "/ws/chat/asks", token) + "&seq=1") as asking,
        websockets.connect(ws_url(gateway, "/ws/chat/follows", token) + "&seq=1") as following,
    ):
        for ws in (asking, following):
            assert json.loads(await ws.recv())["type"] == "connected"
        await asking.send(
            json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"})
        )
        started = json.loads(await asking.recv())
        assert started["type"] == "response_start"
        resume = {"type": "resume", "message_id": started["message_id"]}
        await following.send(json.dumps({**resume, "after": -1}))
        await asyncio.sleep(0.3)
        await following.send(json.dumps({**resume, "after": 2}))
        deltas, end = [], None
        while end is None:
            frame = json.loads(await asyncio.wait_for(following.recv(), QUICK_S))
            if frame["type"] == "text-delta":
                deltas.append(frame)
            elif frame["type"] == "response_end":
                end = frame
    assert [d["index"] for d in deltas] == list(range(len(deltas))), [d["index"] for d in deltas]
    assert "".join(d["text"] for d in deltas).strip() == end["full_response"]


async def test_one_message_id_runs_in_one_chat_of_a_user_at_a_time(
    gateway: GatewayProcess,
) -> None:
    """Message ids are the clients' (the README's own example answers into "a1"), and a
    user's running replies are followed by id alone (the replay buffer, a resume, a
    chat's stream route): two at once under one id, in two chats, were one reply to
    every follower of either, chat 2's end on chat 1's stream."""
    token = make_token(f"twice-{os.urandom(3).hex()}")
    sock = await PySocket().connect(gateway.url, token)
    try:
        sid = sock.client.get_sid()
        assert sid is not None
        message_id = f"a1-{os.urandom(3).hex()}"
        first = turn_body(sid, "one", model="fake-slow", assistant_id=message_id)
        await post_json(f"{gateway.url}/api/chat/completions", token, first)
        second = turn_body(sid, "two", model="fake-model", assistant_id=message_id)
        refused = await post_json(f"{gateway.url}/api/chat/completions", token, second, 409)
        assert "in another of your chats" in json.dumps(refused), refused
        # Once the first has ended, the id is free again (a new chat's turn takes it).
        deadline = time.monotonic() + 30
        while not any(ended(e) for e in sock.events if e["message_id"] == message_id):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await post_json(f"{gateway.url}/api/chat/completions", token, second)
    finally:
        await sock.close()


async def test_a_chunked_polling_post_is_refused_not_read_as_empty(
    gateway: GatewayProcess,
) -> None:
    token = make_token(f"chunked-{os.urandom(3).hex()}")

    async def chunked() -> Any:
        yield ("40" + json.dumps({"token": token})).encode()

    async with aiohttp.ClientSession() as http:
        polling = await _opened(http, gateway)
        async with http.post(polling, data=chunked()) as resp:
            assert resp.status == 411, await resp.text()
            assert "Content-Length" in (await resp.json())["detail"]
        # Sent with its length, the same CONNECT is read: the session goes on.
        async with http.post(polling, data="40" + json.dumps({"token": token})) as resp:
            assert resp.status == 200
        async with http.get(polling) as resp:
            assert (await resp.text()).startswith("40")
