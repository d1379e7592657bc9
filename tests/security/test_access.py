"""Tokens are checked for as long as a socket stays open, not only at connect:
an expired token, a revoked API key and a removed user end the connections
that hang on them, on every transport; a removed user's JWT does not make the
user again; tokens in query strings are accepted on socket handshakes only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.clients import PySocket, get_json, post_json, turn_body
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

RECHECK_S = 0.2
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def guarded(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("access")
    env = {"PATH": os.environ["PATH"], "DATA_DIR": str(data), "WEBUI_SECRET_KEY": "k" * 40}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "users",
            "add",
            "--email",
            ADMIN_EMAIL,
            "--password",
            ADMIN_PASSWORD,
            "--role",
            "admin",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    proc = GatewayProcess(
        data,
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_ACCESS_RECHECK_S": str(RECHECK_S)},
    ).start()
    yield proc
    proc.stop()


async def admin_token(gateway: GatewayProcess) -> str:
    session = await post_json(
        f"{gateway.url}/api/v1/auths/signin",
        None,
        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    )
    return str(session["token"])


def new_user(ttl_s: int | None = 600) -> tuple[str, str]:
    user_id = f"acc-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id, ttl_s=ttl_s)


def ws_url(gateway: GatewayProcess, path: str, token: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}?token={token}"


async def closed_within(ws: Any, timeout_s: float) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes; (code, reason, frames seen before)."""
    frames = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            frames.append(
                json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            )
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server did not close"
        return closed.rcvd.code, closed.rcvd.reason, frames


# -- expiry ---------------------------------------------------------------------------
async def test_a_socketio_socket_is_disconnected_when_its_token_expires(
    guarded: GatewayProcess,
) -> None:
    user_id, token = new_user(ttl_s=2)
    sock = await PySocket().connect(guarded.url, token)
    gone = asyncio.Event()
    sock.client.on("disconnect", lambda *_: gone.set())
    try:
        # Still served before expiry: a reply reaches it.
        body = turn_body(sock.sid, "before expiry")
        await post_json(f"{guarded.url}/api/chat/completions", token, body)
        await sock.wait_ended()
        await asyncio.wait_for(gone.wait(), 2 + 3)
        count = len(sock.events)
        # A reply of the same user (another, fresh token) no longer reaches it.
        fresh = make_token(user_id)
        await post_json(f"{guarded.url}/api/chat/completions", fresh, turn_body("none", "after"))
        await asyncio.sleep(1)
        assert len(sock.events) == count
    finally:
        await sock.close()


@pytest.mark.parametrize(
    ("path", "first", "reason"),
    [
        ("/ws/chat/s-{n}", {"type": "connected"}, "Invalid token"),  # Nadoo's exact reason
        ("/v1/ws/chat", None, "Token expired"),
    ],
)
async def test_a_raw_websocket_is_closed_1008_when_its_token_expires(
    guarded: GatewayProcess, path: str, first: dict[str, str] | None, reason: str
) -> None:
    _, token = new_user(ttl_s=2)
    async with websockets.connect(
        ws_url(guarded, path.format(n=uuid.uuid4().hex[:6]), token)
    ) as ws:
        if first is not None:
            assert json.loads(await ws.recv())["type"] == first["type"]
        started = time.monotonic()
        code, why, frames = await closed_within(ws, 5)
    assert code == 1008 and why == reason
    assert 1.0 < time.monotonic() - started < 4.5
    if path == "/v1/ws/chat":
        # RAGFlow's refusal frame, as for a bad token at open.
        assert frames and frames[-1]["code"] == 109


async def test_a_nadoo_socket_cannot_chat_after_expiry(guarded: GatewayProcess) -> None:
    _, token = new_user(ttl_s=1)
    async with websockets.connect(ws_url(guarded, "/ws/chat/s-late", token)) as ws:
        await ws.recv()  # connected
        await asyncio.sleep(2)
        with pytest.raises(ConnectionClosed):
            await ws.send(json.dumps({"type": "chat", "content": "too late"}))
            await asyncio.wait_for(ws.recv(), 3)


# -- a removed user ---------------------------------------------------------------------
async def test_an_admin_removes_a_user_everywhere_at_once(guarded: GatewayProcess) -> None:
    admin = await admin_token(guarded)
    user_id, token = new_user()
    await get_json(f"{guarded.url}/api/v1/chats/", token)  # the user exists now (JIT)
    chat = await post_json(
        f"{guarded.url}/api/v1/chats/new",
        token,
        {"chat": {"title": "mine", "history": {"messages": {}}}},
    )
    sock = await PySocket().connect(guarded.url, token)
    gone = asyncio.Event()
    sock.client.on("disconnect", lambda *_: gone.set())
    try:
        async with websockets.connect(ws_url(guarded, "/ws/chat/s-removed", token)) as ws:
            await ws.recv()
            assert (
                await post_json(
                    f"{guarded.url}/api/v1/users/{user_id}", admin, None, method="DELETE"
                )
                is True
            )
            code, why, _ = await closed_within(ws, 2)
        assert (code, why) == (1008, "Invalid token")
        await asyncio.wait_for(gone.wait(), 2)
    finally:
        await sock.close()
    # Their JWT is refused from now on, not turned into a new user; their chat is gone.
    await get_json(f"{guarded.url}/api/v1/chats/", token, expect=401)
    await get_json(f"{guarded.url}/api/v1/chats/{chat['id']}", admin, expect=404)
    # Removing again, or an unknown id: 404; oneself or as a non-admin: 403.
    await post_json(f"{guarded.url}/api/v1/users/{user_id}", admin, None, 404, method="DELETE")
    other_id, other = new_user()
    await get_json(f"{guarded.url}/api/v1/chats/", other)
    await post_json(f"{guarded.url}/api/v1/users/{other_id}", other, None, 403, method="DELETE")
    me = (await get_json(f"{guarded.url}/api/v1/auths/", admin))["id"]
    await post_json(f"{guarded.url}/api/v1/users/{me}", admin, None, 403, method="DELETE")


async def test_the_cli_removes_a_user_from_a_running_gateway(guarded: GatewayProcess) -> None:
    user_id, token = new_user()
    async with websockets.connect(ws_url(guarded, "/ws/chat/s-cli", token)) as ws:
        await ws.recv()
        env = {
            "PATH": os.environ["PATH"],
            "DATA_DIR": str(guarded.data_dir),
            "WEBUI_SECRET_KEY": "k" * 40,
        }
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "users", "remove", user_id],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        # Another process changed the store: the gateway sees it at its next recheck.
        code, _, _ = await closed_within(ws, RECHECK_S + 3)
    assert code == 1008
    await get_json(f"{guarded.url}/v1/models", token, expect=401)


# -- a revoked API key --------------------------------------------------------------------
async def test_deleting_an_api_key_closes_what_it_opened(guarded: GatewayProcess) -> None:
    _, token = new_user()
    key = (await post_json(f"{guarded.url}/api/v1/auths/api_key", token, {}))["api_key"]
    ragflow = (await post_json(f"{guarded.url}/ragflow/v1/system/new_token", token, {}))["data"][
        "token"
    ]
    async with (
        websockets.connect(ws_url(guarded, "/ws/chat/s-key", key)) as by_key,
        websockets.connect(ws_url(guarded, "/ws/chat/s-jwt", token)) as by_jwt,
    ):
        await by_key.recv()
        await by_jwt.recv()
        assert (
            await post_json(f"{guarded.url}/api/v1/auths/api_key", token, None, method="DELETE")
            is True
        )
        code, _, _ = await closed_within(by_key, 2)
        assert code == 1008
        # The user's other connections are theirs still.
        await by_jwt.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(by_jwt.recv(), 3))["type"] == "pong"
    await get_json(f"{guarded.url}/v1/models", key, expect=401)
    await get_json(f"{guarded.url}/v1/models", ragflow)  # a RAGFlow token is not an sk- key


# -- tokens in query strings -----------------------------------------------------------------
async def test_a_token_in_the_query_is_for_socket_handshakes_only(guarded: GatewayProcess) -> None:
    _, token = new_user()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{guarded.url}/v1/models", params={"token": token}) as resp:
            assert resp.status == 401
            # Told why, in the route's own shape (OpenAI's error object here).
            error = (await resp.json())["error"]
            assert "a token in the URL (?token=) is read only by the event streams" in (
                error["message"]
            )
            assert token not in await resp.text()
        async with session.get(
            f"{guarded.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
    async with websockets.connect(ws_url(guarded, "/ws/chat/s-query", token)) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
