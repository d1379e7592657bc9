"""A revoked API key, with two replicas A and B on one Redis and one PostgreSQL
database: refused on REST, SSE, Socket.IO and each raw WebSocket path of both
replicas, and what it had open closed (SECURITY.md, "Every authenticated socket
holds a lease on its access").

The key is revoked on A (`DELETE /api/v1/auths/api_keys/{id}`).  A closes its own
connections at once, without its poll (its GATEWAY_ACCESS_RECHECK_S is set far
beyond the bounds asserted); B notices the row at its next recheck (set low).
Both kinds of key are tried: an Open WebUI `sk-` key and a RAGFlow token, since
any key works on every flavour as its owner (docs/PROTOCOLS.md §0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import websockets

from tests.api.test_api_keys import call
from tests.clients import PySocket, get_json, post_json, turn_body
from tests.gatewayproc import GatewayProcess, make_token
from tests.scale.test_resume_replicas import RAGFLOW_END, is_end, recv, sse, ws_url
from tests.scale.test_resume_replicas import kind as kind_of
from tests.security.test_access import closed_within

Start = Callable[..., GatewayProcess]

KINDS = ["openwebui", "ragflow"]
RECHECK_S = 0.3  # B's poll
NEVER_S = 600  # A's poll: A must close its own without it
AT_ONCE_S = 1.5  # bound for A's closes, counted from the DELETE
POLLED_S = RECHECK_S + 2.5  # bound for B's closes: a recheck, and slack
PING = json.dumps({"type": "ping"})


def user() -> tuple[str, str]:
    user_id = f"revoked-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


def replicas(
    cluster: Start, b_recheck_s: float = RECHECK_S
) -> tuple[GatewayProcess, GatewayProcess]:
    a = cluster("a", extra={"GATEWAY_ACCESS_RECHECK_S": str(NEVER_S)})
    b = cluster("b", extra={"GATEWAY_ACCESS_RECHECK_S": str(b_recheck_s)})
    return a, b


async def make_key(replica: GatewayProcess, token: str, kind: str) -> tuple[str, str]:
    """A new key of `kind` for the token's user: (the key, its id as listed)."""
    if kind == "openwebui":
        key = (await post_json(f"{replica.url}/api/v1/auths/api_key", token, {}))["api_key"]
    else:
        made = await post_json(f"{replica.url}/ragflow/v1/system/new_token", token, None)
        key = made["data"]["token"]
    listed = await get_json(f"{replica.url}/api/v1/auths/api_keys", token)
    (row,) = [k for k in listed if k["kind"] == kind]
    assert row["hint"] == f"{key[:6]}…{key[-4:]}", row
    return str(key), str(row["id"])


async def revoke(replica: GatewayProcess, token: str, key_id: str) -> None:
    url = f"{replica.url}/api/v1/auths/api_keys/{key_id}"
    assert await post_json(url, token, None, method="DELETE") is True


async def assistant_of(replica: GatewayProcess, token: str) -> str:
    body = {"name": "bot", "llm": {"model_name": "fake-model"}}
    made = await post_json(f"{replica.url}/ragflow/api/v1/chats", token, body)
    return str(made["data"]["id"])


def paths(user_id: str, assistant: str) -> dict[str, str]:
    """Every authenticated raw WebSocket path (Nadoo's also under /api, RAGFlow's under
    /ragflow): name → path."""
    session, workspace = f"s-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    return {
        "nadoo chat": f"/ws/chat/{session}",
        "nadoo chat under /api": f"/api/ws/chat/{session}",
        "nadoo notifications": f"/ws/notifications/{user_id}",
        "nadoo workspace": f"/ws/workspaces/{workspace}",
        "ragflow chat": "/v1/ws/chat",
        "ragflow chat under /ragflow": "/ragflow/v1/ws/chat",
        "ragflow assistant": f"/api/v1/ws/chats/{assistant}/completions",
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_ragflow(name: str) -> bool:
    return name.startswith("ragflow")


# -- connections and what they show ------------------------------------------------------
class Tab(PySocket):
    """A python-socketio client that records why it was let go."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.client.on("disconnect", self._on_disconnect)

    async def _on_disconnect(self, reason: str = "") -> None:
        if not self.gone.done():
            self.gone.set_result(reason)


async def open_ws(
    stack: contextlib.AsyncExitStack, replica: GatewayProcess, path: str, key: str
) -> Any:
    return await stack.enter_async_context(
        websockets.connect(ws_url(replica, f"{path}?token={key}"))
    )


async def pong(ws: Any) -> None:
    """A ping answered (a notification or presence frame may come first)."""
    await ws.send(PING)
    for _ in range(5):
        if (await recv(ws, why="a pong"))["type"] == "pong":
            return
    raise AssertionError("no pong among 5 frames")


async def ragflow_answers(ws: Any, frame: dict[str, Any]) -> None:
    """A question answered: chunks of code 0, then the end marker."""
    await ws.send(json.dumps(frame))
    for _ in range(200):
        chunk = await recv(ws, why="a RAGFlow answer")
        if chunk == RAGFLOW_END:
            return
        assert chunk["code"] == 0, chunk
    raise AssertionError("no end marker in 200 chunks")


async def server_closed(ws: Any, within_s: float) -> tuple[int, str, list[dict[str, Any]]]:
    try:
        return await closed_within(ws, within_s)
    except TimeoutError:
        raise AssertionError(f"still open {within_s} s on") from None


async def sse_ended(
    events: AsyncGenerator[tuple[str | None, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """The envelopes up to the stream's end (EOF)."""
    return [envelope async for _, envelope in events]


async def timed(waited: Awaitable[Any], within_s: float, started: float) -> tuple[Any, float]:
    """What `waited` gives within `within_s`, and when, since `started`."""
    try:
        outcome = await asyncio.wait_for(waited, within_s)
    except TimeoutError:
        raise AssertionError(f"not closed within {within_s} s") from None
    return outcome, time.monotonic() - started


# -- 1. what the key had open is closed, on both replicas ---------------------------------
async def open_tabs(
    stack: contextlib.AsyncExitStack,
    a: GatewayProcess,
    b: GatewayProcess,
    key: str,
    user_id: str,
) -> dict[str, Tab]:
    """Socket.IO with the key: by the handshake on A and on B (websocket, and polling),
    and by `user-join` on B."""
    tabs = {
        "socket.io on a": Tab(),
        "socket.io on b": Tab(),
        "socket.io polling on b": Tab(),
        "user-join on b": Tab(),
    }
    for tab in tabs.values():
        stack.push_async_callback(tab.close)
    await tabs["socket.io on a"].connect(a.url, key)
    await tabs["socket.io on b"].connect(b.url, key)
    await tabs["socket.io polling on b"].connect(b.url, key, transports=["polling"])
    await tabs["user-join on b"].connect(b.url, None)
    joined = await tabs["user-join on b"].client.call(
        "user-join", {"auth": {"token": key}}, timeout=10
    )
    assert joined is not None and joined["id"] == user_id, joined
    return tabs


async def open_sockets(
    stack: contextlib.AsyncExitStack,
    a: GatewayProcess,
    b: GatewayProcess,
    key: str,
    on: dict[str, str],
    assistant: str,
) -> dict[str, Any]:
    """Raw WebSockets with the key on both replicas, each shown to work: a pong, or a
    RAGFlow question answered."""
    sockets = {
        "nadoo chat on a": await open_ws(stack, a, on["nadoo chat"], key),
        "nadoo chat on b": await open_ws(stack, b, on["nadoo chat under /api"], key),
        "nadoo workspace on a": await open_ws(stack, a, on["nadoo workspace"], key),
        "nadoo notifications on b": await open_ws(stack, b, on["nadoo notifications"], key),
        "ragflow assistant on a": await open_ws(stack, a, on["ragflow assistant"], key),
        "ragflow chat on b": await open_ws(stack, b, on["ragflow chat under /ragflow"], key),
    }
    for name, ws in sockets.items():
        if name.startswith("nadoo chat"):
            assert (await recv(ws))["type"] == "connected"
        if name == "ragflow assistant on a":  # the path names the assistant
            await ragflow_answers(ws, {"question": "hi"})
        elif is_ragflow(name):
            await ragflow_answers(ws, {"type": "chat", "chat_id": assistant, "question": "hi"})
        else:
            await pong(ws)
    return sockets


async def open_stream(
    stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, url: str, key: str
) -> AsyncGenerator[tuple[str | None, dict[str, Any]], None]:
    resp = await stack.enter_async_context(http.get(url, headers=bearer(key)))
    assert resp.status == 200, (url, resp.status, await resp.text())
    events = sse(resp, timeout_s=10)
    stack.push_async_callback(events.aclose)
    return events


@pytest.mark.parametrize("kind", KINDS)
async def test_revoking_a_key_on_a_closes_what_it_opened_on_both_replicas(
    cluster: Start, kind: str
) -> None:
    a, b = replicas(cluster)
    user_id, token = user()
    key, key_id = await make_key(a, token, kind)
    assistant = await assistant_of(a, key)
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        tabs = await open_tabs(stack, a, b, key, user_id)
        sockets = await open_sockets(stack, a, b, key, paths(user_id, assistant), assistant)
        # The same user by their JWT, on B: theirs still after the revocation.
        control = await open_ws(stack, b, paths(user_id, assistant)["nadoo chat"], token)
        assert (await recv(control))["type"] == "connected"
        # The SSE mirror on B; a reply asked on A with the key, that it and every tab get.
        mirror = await open_stream(stack, http, f"{b.url}/api/v1/events", key)
        first = turn_body(tabs["socket.io on a"].sid, "before the revocation")
        await post_json(f"{a.url}/api/chat/completions", key, first)
        for tab in tabs.values():
            await tab.wait_ended(timeout_s=10)
        async for _, envelope in mirror:
            if envelope["message_id"] == first["id"] and is_end(envelope):
                break
        # A 15-second reply, followed on B by its own SSE stream.
        crawl = turn_body(tabs["socket.io on a"].sid, "a long one", model="fake-crawl")
        chat_id = (await post_json(f"{a.url}/api/chat/completions", key, crawl))["chat_id"]
        stack.push_async_callback(post_json, f"{a.url}/api/tasks/chat/{chat_id}/stop", token, None)
        reply_url = f"{b.url}/api/v1/chats/{chat_id}/messages/{crawl['id']}/stream"
        reply = await open_stream(stack, http, reply_url, key)
        await anext(reply)

        started = time.monotonic()
        await revoke(a, token, key_id)
        waits: dict[str, Awaitable[Any]] = {
            **{name: tab.gone for name, tab in tabs.items()},
            **{name: server_closed(ws, POLLED_S) for name, ws in sockets.items()},
            "sse mirror on b": sse_ended(mirror),
            "sse reply stream on b": sse_ended(reply),
        }
        names = list(waits)
        outcomes = await asyncio.gather(*(timed(waits[name], POLLED_S, started) for name in names))
        closed = dict(zip(names, outcomes, strict=True))

        # A's closed at once (its own poll is minutes away), B's at its recheck.
        late = {
            name: round(took, 2)
            for name, (_, took) in closed.items()
            if name.endswith("on a") and took > AT_ONCE_S
        }
        assert not late, f"A's own connections closed late: {late}"
        for name, tab in tabs.items():
            assert closed[name][0] == tab.client.reason.SERVER_DISCONNECT, (name, closed[name])
        for name in sockets:
            code, reason, frames = closed[name][0]
            if is_ragflow(name):
                # RAGFlow's refusal frame, as at open, then 1008.
                assert (code, reason) == (1008, "API key revoked"), (name, code, reason)
                assert frames and frames[-1]["code"] == 109, (name, frames)
            else:
                assert (code, reason) == (1008, "Invalid token"), (name, code, reason)
        # The reply's stream ended with its access, long before the reply did.
        rest = [kind_of(envelope) for envelope in closed["sse reply stream on b"][0]]
        assert "chat:completion" not in rest, rest
        # The user's connection by their JWT is theirs still.
        await pong(control)


# -- 2. the key refused on every path of both replicas -----------------------------------
async def refused_over_http(replica: GatewayProcess, key: str, assistant: str) -> None:
    for method, path, body in (
        ("GET", "/api/v1/auths/", None),
        ("GET", "/api/models", None),
        ("GET", "/api/v1/events", None),
        ("GET", "/api/v1/chats/c-1/messages/m-1/stream", None),
    ):
        status, answer = await call(replica, method, path, key, body)
        assert status == 401 and "detail" in answer, (replica.url, path, status, answer)
    question = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    for method, path, body in (
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", question),
    ):
        status, answer = await call(replica, method, path, key, body)
        assert status == 401, (replica.url, path, status, answer)
        error = answer["error"]  # OpenAI's shape
        assert error["type"] == "authentication_error" and error["message"], (path, answer)
        assert set(error) >= {"message", "type", "code"}, (path, answer)
    for method, path, body in (
        ("GET", "/ragflow/api/v1/chats", None),
        (
            "POST",
            f"/ragflow/api/v1/chats/{assistant}/completions",
            {"question": "hi", "stream": True},
        ),
    ):
        status, answer = await call(replica, method, path, key, body)
        assert status == 200 and answer["code"] == 109, (replica.url, path, status, answer)


async def refused_over_websockets(
    replica: GatewayProcess, key: str, user_id: str, assistant: str
) -> None:
    for name, path in paths(user_id, assistant).items():
        async with websockets.connect(ws_url(replica, f"{path}?token={key}")) as ws:
            code, reason, frames = await server_closed(ws, 5)
        if is_ragflow(name):
            assert code == 1008 and [f["code"] for f in frames] == [109], (name, code, frames)
        else:
            assert (code, reason, frames) == (1008, "Invalid token", []), (name, code, reason)


async def refused_over_socketio(replica: GatewayProcess, key: str, token: str) -> None:
    """Socket.IO accepts every connection (`always_connect`): the key's is anonymous, its
    `user-join` refused, and a reply of the user reaches a tab of theirs, not it."""
    refused, witness = Tab(), PySocket()
    try:
        await refused.connect(replica.url, key)
        await witness.connect(replica.url, token)
        assert await refused.client.call("user-join", {"auth": {"token": key}}, timeout=10) is None
        join = {"chat_id": "c-1", "data": {"type": "join"}}
        assert await refused.client.call("events:chat", join, timeout=10) is None
        body = turn_body(witness.sid, "after the revocation")
        await post_json(f"{replica.url}/api/chat/completions", token, body)
        await witness.wait_ended(timeout_s=10)
        assert refused.events == [], refused.events
        assert not refused.gone.done()  # anonymous, not disconnected
    finally:
        await refused.close()
        await witness.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_key_revoked_on_a_is_refused_on_every_path_of_both_replicas(
    cluster: Start, kind: str
) -> None:
    # B's poll is slow here: its refusals come from the shared store, not from a recheck.
    a, b = replicas(cluster, b_recheck_s=NEVER_S)
    user_id, token = user()
    assistant = await assistant_of(a, token)
    key, key_id = await make_key(a, token, kind)
    for replica in (a, b):
        status, me = await call(replica, "GET", "/api/v1/auths/", key)
        assert status == 200 and me["id"] == user_id, (status, me)
    await revoke(a, token, key_id)
    for replica in (a, b):
        assert await get_json(f"{replica.url}/api/v1/auths/api_keys", token) == []
        await refused_over_http(replica, key, assistant)
        await refused_over_websockets(replica, key, user_id, assistant)
        await refused_over_socketio(replica, key, token)
    # Revoked once: again is not found.
    url = f"{b.url}/api/v1/auths/api_keys/{key_id}"
    await post_json(url, token, None, expect=404, method="DELETE")
