"""WebSocket probes: the upgrade on every WebSocket path, Socket.IO over websocket and
over long-polling (many sessions, to catch a proxy without stickiness), and a
WebSocket held idle past a proxy's idle timeout.

Engine.IO 4 long-polling, as driven by hand here (one "session" = one browser)::

    GET  <sio>/?EIO=4&transport=polling            → 0{"sid": S, "upgrades": ["websocket"], …}
    POST <sio>/?EIO=4&transport=polling&sid=S  40{"token": T}      → ok
    GET  <sio>/?EIO=4&transport=polling&sid=S      → 40{"sid": …}   (44{…}: refused, still sticky)
    upgrade: WS <sio>/?EIO=4&transport=websocket&sid=S  2probe → 3probe, then 5
    POST … 1                                       close

Packets in one polling body are separated by \\x1e.  Every request of S must
reach the replica holding S; another replica answers 400 "Session ID unknown".
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio

from gateway.doctor import fixes
from gateway.doctor.report import Fault, Skip
from gateway.doctor.target import SOCKETIO_PATH, Findings, Target, doctor_name, excerpt

# The Engine.IO protocol revision the gateway speaks (python-engineio 4).
EIO = "EIO=4"
RECORD_SEPARATOR = "\x1e"
# What the gateway (or python-engineio itself) says for a session it does not hold.
UNKNOWN_SESSION = ("Session ID unknown", "Invalid session")
# What python-engineio answers a websocket request when it serves polling only.
INVALID_TRANSPORT = "Invalid transport"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    path: str  # what is requested, under URL
    shown: str  # what a report line says
    with_token: bool = False


def ws_routes() -> list[Route]:
    """One route per WebSocket endpoint family (a proxy may route each differently)."""
    random = doctor_name()
    return [
        Route("socket.io", f"{SOCKETIO_PATH}/?{EIO}&transport=websocket", SOCKETIO_PATH),
        Route("nadoo", f"/ws/chat/{random}", "/ws/chat/…", with_token=True),
        Route("ragflow-health", "/v1/ws/health", "/v1/ws/health"),
        Route("ragflow", "/v1/ws/chat", "/v1/ws/chat", with_token=True),
        Route(
            "ragflow-assistant",
            f"/api/v1/ws/chats/{random}/completions",
            "/api/v1/ws/chats/…/completions",
            with_token=True,
        ),
    ]


# -- websocket-upgrade -------------------------------------------------------------
async def websocket_upgrade(target: Target, found: Findings) -> str:
    """A handshake on each WebSocket path; 101 is all it asks (a token refused after
    the upgrade still proves the proxy upgrades)."""
    upgraded: list[str] = []
    failed: dict[str, list[str]] = {}  # "426 (…)" → paths
    fix: list[str] = []
    polling_only = ""
    for route in ws_routes():
        shown = target.sub_path + route.shown
        problem, route_fix = await _handshake(target, target.url(route.path, route.with_token))
        found.upgrades[route.name] = problem is None
        if problem is None:
            upgraded.append(shown)
        elif route.name == "socket.io" and INVALID_TRANSPORT in problem:
            # Engine.IO itself refused: the gateway was told to poll only.
            found.socketio_polling_only = True
            polling_only = f"; {shown}: polling only (ENABLE_WEBSOCKET_SUPPORT=false)"
        else:
            failed.setdefault(problem, []).append(shown)
            fix.extend(route_fix)
    if failed:
        parts = [f"{problem} on {', '.join(paths)}" for problem, paths in failed.items()]
        if upgraded:
            parts.append(f"101 on {', '.join(upgraded)}")
        raise Fault("; ".join(parts) + polling_only, fix)
    return f"101 on {', '.join(upgraded)}{polling_only}"


def _upgrade_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
    }


async def _handshake(target: Target, url: str) -> tuple[str | None, tuple[str, ...]]:
    """None when the server switched protocols; else what went wrong and its fix."""
    try:
        async with target.session.ws_connect(url, heartbeat=None, autoping=True):
            return None, ()
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 101:
            return f"101 with a bad handshake ({exc.message})", fixes.UPGRADE
        status = exc.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        fault = fixes.network_fault(exc, target.options.timeout, "handshake")
        return fault.detail, fault.fix
    body = await _refusal_body(target, url)
    if status == 426:
        if "HTTP/1.0" in body:
            return "426 (the proxy spoke HTTP/1.0 to the gateway)", fixes.UPGRADE
        return "426 (the proxy dropped Upgrade)", fixes.UPGRADE
    if status == 400:
        return f"400 ({excerpt(body) or 'the handshake was refused'})", (
            "a proxy may have rewritten Connection/Upgrade (nginx: Connection must be "
            "$connection_upgrade); for Socket.IO, ENABLE_WEBSOCKET_SUPPORT=false turns "
            "websocket off",
        )
    meaning, fix = fixes.http_status(status)
    return f"{status} ({meaning})", fix


async def _refusal_body(target: Target, url: str) -> str:
    """The body of a refused handshake (aiohttp's WebSocket client drops it): ask again."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with target.session.get(url, headers=_upgrade_headers()) as resp:
            if resp.status != 101:
                return await resp.text(errors="replace")
    return ""


# -- socketio-websocket --------------------------------------------------------------
@contextlib.asynccontextmanager
async def socketio_client(
    target: Target,
    on_events: Callable[[Any], Awaitable[None]] | None = None,
    transport: str = "websocket",
) -> AsyncIterator[socketio.AsyncClient]:
    """python-socketio's client over one transport, with the token as `auth`."""
    client = socketio.AsyncClient(
        reconnection=False,
        http_session=target.session,
        ssl_verify=not target.options.insecure,
        logger=False,
        engineio_logger=False,
    )
    if on_events is not None:
        client.on("events", on_events)
    try:
        await client.connect(
            target.root,
            socketio_path=target.sio_path,
            transports=[transport],
            auth={"token": target.token} if target.token else None,
            wait_timeout=target.options.timeout,
        )
    except socketio.exceptions.ConnectionError as exc:
        raise Fault(
            f"Socket.IO over {transport} at {target.sio_path} did not connect: {exc}",
            ("see the gateway's log; a proxy in front must pass this path on",),
        ) from None
    try:
        yield client
    finally:
        await client.disconnect()


async def socketio_websocket(target: Target, found: Findings) -> str:
    if found.socketio_polling_only:
        raise Skip(
            "the gateway serves Socket.IO over polling only (ENABLE_WEBSOCKET_SUPPORT=false)"
        )
    found.require_upgrade("socket.io")
    async with socketio_client(target) as client:
        transport = client.transport()
        sid = client.get_sid()
    how = "with the token as auth" if target.token else "without a token"
    return f"connected over {transport} at {target.sio_path} ({how}), sid {sid}"


# -- socketio-polling ----------------------------------------------------------------
class _Unknown(Exception):
    """A replica that does not hold the session answered."""


async def socketio_polling(target: Target, found: Findings) -> str:
    polls = target.options.polls
    unknown: list[str] = []
    other: list[Fault] = []
    upgrade = ""
    for index in range(polls):
        # One session also upgrades, when the websocket path works at all.
        try_upgrade = index == 0 and found.upgrades.get("socket.io", False)
        async with target.new_session() as session:  # a new browser: no cookies yet
            try:
                upgrade = await _polling_session(target, session, try_upgrade) or upgrade
            except _Unknown as exc:
                unknown.append(str(exc))
            except Fault as exc:
                other.append(exc)
            except (aiohttp.ClientError, OSError) as exc:
                other.append(fixes.network_fault(exc, target.options.timeout, "polling"))
    if unknown:
        found.polling_sticky = False
        raise Fault(
            f"not sticky: {len(unknown)} of {polls} polling sessions reached a replica that "
            f"does not hold them ({unknown[0]})",
            fixes.STICKY,
        )
    if other:
        raise Fault(
            f"{len(other)} of {polls} polling sessions failed: {other[0].detail}", other[0].fix
        )
    if found.socketio_polling_only:
        upgrade = "no upgrade offered (polling only)"
    elif not found.upgrades.get("socket.io", False):
        upgrade = "upgrade not tried (see websocket-upgrade)"
    how = "with the token" if target.token else "without a token"
    return f"{polls} of {polls} polling sessions connected ({how}), {upgrade}"


async def _polling_session(
    target: Target, session: aiohttp.ClientSession, try_upgrade: bool
) -> str:
    """One Engine.IO session by hand; says how its upgrade went when it tried one."""
    polling = f"{SOCKETIO_PATH}/?{EIO}&transport=polling"
    opened = await _poll(session, target.url(f"{polling}&t={time.time_ns()}"), "GET")
    if not opened.startswith("0"):
        raise Fault(f"the Engine.IO handshake answered {excerpt(opened)!r}, not an open packet")
    handshake = json.loads(opened[1:])
    sid, upgrades = handshake["sid"], handshake.get("upgrades", [])
    url = target.url(f"{polling}&sid={sid}")
    auth = "40" + (json.dumps({"token": target.token}) if target.token else "")
    await _poll(session, url, "POST", auth)
    deadline = time.monotonic() + target.options.timeout
    while time.monotonic() < deadline:
        packets = (await _poll(session, f"{url}&t={time.time_ns()}", "GET")).split(RECORD_SEPARATOR)
        # 40: connected; 44: refused (auth), which proves the session was found.
        if any(packet.startswith(("40", "44")) for packet in packets):
            break
    else:
        raise Fault("no Socket.IO connect answer over polling")
    if try_upgrade and "websocket" in upgrades:
        await _upgrade(target, session, sid)  # the websocket closes the session
        return "one upgraded to websocket"
    with contextlib.suppress(Fault, _Unknown, aiohttp.ClientError, OSError):
        await _poll(session, url, "POST", "1")  # close: leave nothing open
    return ""


async def _poll(session: aiohttp.ClientSession, url: str, method: str, body: str = "") -> str:
    headers = {"Content-Type": "text/plain;charset=UTF-8"} if method == "POST" else {}
    async with session.request(method, url, data=body or None, headers=headers) as resp:
        text = await resp.text(errors="replace")
        if resp.status == 400 and any(marker in text for marker in UNKNOWN_SESSION):
            raise _Unknown(excerpt(text).split(". ")[0])
        if resp.status != 200:
            meaning, fix = fixes.http_status(resp.status)
            raise Fault(f"{method} polling: {resp.status} {excerpt(text) or meaning}", fix)
        return text


async def _upgrade(target: Target, session: aiohttp.ClientSession, sid: str) -> None:
    url = target.url(f"{SOCKETIO_PATH}/?{EIO}&transport=websocket&sid={sid}")
    try:
        async with session.ws_connect(url, heartbeat=None) as ws:
            await ws.send_str("2probe")
            answer = await ws.receive(timeout=target.options.timeout)
            if answer.type != aiohttp.WSMsgType.TEXT or answer.data != "3probe":
                raise Fault(f"upgrade from polling: expected 3probe, got {answer.data!r}")
            await ws.send_str("5")
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 400:
            raise _Unknown("the websocket upgrade of a polling session got 400") from None
        raise Fault(f"upgrade from polling: {exc.status}", fixes.UPGRADE) from None


# -- idle-stream ---------------------------------------------------------------------
PROGRESS_EVERY_S = 5.0


async def idle_stream(target: Target, found: Findings) -> str:
    """A raw WebSocket left idle (only the server's pings, answered), then used."""
    if not target.options.slow:
        raise Skip("needs --slow (holds a WebSocket idle for --idle-seconds)")
    # A Nadoo chat socket answers {"type":"ping"} with a pong; without a token,
    # RAGFlow's health socket echoes whatever it gets.
    if target.token and found.token_ok and found.upgrades.get("nadoo"):
        url = target.url(f"/ws/chat/{doctor_name()}", with_token=True)
        path, hello, answer = "/ws/chat/…", '{"type":"ping"}', '"pong"'
    else:
        found.require_upgrade("ragflow-health")
        url = target.url("/v1/ws/health")
        path, hello, answer = "/v1/ws/health", "gateway doctor", '"echo"'
    path = target.sub_path + path
    idle_s = target.options.idle_seconds
    # Pings answered here, not by aiohttp: its receive(timeout) starts the timeout
    # afresh after each ping it answers, and the gateway pings every 25 s.
    async with target.session.ws_connect(url, heartbeat=None, autoping=False) as ws:
        await ws.receive(timeout=target.options.timeout)  # the greeting
        started = time.monotonic()
        told = started
        while (left := started + idle_s - time.monotonic()) > 0:
            if time.monotonic() - told >= PROGRESS_EVERY_S or told == started:
                told = time.monotonic()
                target.progress(f"idle-stream: {told - started:.0f}/{idle_s:g} s idle")
            try:
                msg = await ws.receive(timeout=min(left, PROGRESS_EVERY_S))
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                closed_after = time.monotonic() - started
                raise Fault(
                    f"{path} closed after {closed_after:.0f} s idle (of {idle_s:g} s; "
                    f"close code {ws.close_code})",
                    fixes.IDLE,
                )
        await ws.send_str(hello)
        while True:
            msg = await ws.receive(timeout=target.options.timeout)
            if msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise Fault(f"{path} closed when used after {idle_s:g} s idle", fixes.IDLE)
            if answer in msg.data:
                break
    return f"{path} still open after {idle_s:g} s idle, and answered"
