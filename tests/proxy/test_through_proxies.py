"""Every flavour's client completes a chat through each shipped proxy config
(nginx and Caddy, at the root and under /chat), with two replicas behind it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
import websocket
import websockets
from ragflow_sdk import RAGFlow
from ragflow_sdk.modules.chat import Chat

from tests.clients import (
    JSSocket,
    PySocket,
    completion_of,
    get_json,
    post_json,
    text_of,
    turn_body,
)
from tests.fakes.upstream import reply_text
from tests.gatewayproc import GatewayProcess, make_token
from tests.proxy.runners import (
    REPO,
    Proxy,
    caddy_binary,
    nginx_site,
    nginx_test,
    self_signed,
)


def user() -> str:
    return make_token(f"proxy-{uuid.uuid4().hex[:10]}")


def expected(question: str, model: str = "fake-model") -> str:
    return reply_text(model, [{"role": "user", "content": question}])


async def ragflow_key(proxy: Proxy) -> str:
    made = await post_json(f"{proxy.base}/ragflow/v1/system/new_token", user(), None)
    return str(made["data"]["token"])


@pytest.mark.parametrize(
    "config",
    ["nginx/gateway.conf", "nginx/gateway-subpath.conf", "deploy/compose/nginx.conf"],
    ids=["root", "subpath", "compose"],
)
def test_the_shipped_nginx_configs_pass_nginx_t(config: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    text = nginx_site((REPO / config).read_text(), config, [1, 2], 8, 9, cert, key)
    checked = nginx_test(tmp_path / "conf", text)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@pytest.mark.parametrize("config", ["Caddyfile", "Caddyfile.subpath"])
def test_the_shipped_caddyfiles_validate_as_written(config: str, tmp_path: Path) -> None:
    """As shipped (the real host name: Caddy would get its certificate), and in
    `caddy fmt`'s layout so a copy reads the same after `caddy fmt --overwrite`."""
    path = REPO / "caddy" / config
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    run = [caddy_binary(), "validate", "--config", str(path), "--adapter", "caddyfile"]
    checked = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 0 and "Valid configuration" in checked.stdout + checked.stderr
    formatted = subprocess.run(
        [caddy_binary(), "fmt", str(path)], capture_output=True, text=True, check=True
    )
    assert formatted.stdout == path.read_text()


async def test_both_replicas_answer_through_the_proxy(proxy: Proxy) -> None:
    """Health and the API under the proxy's base; /ready shows the shared bus."""
    ready = await get_json(f"{proxy.base}/ready", None)
    assert ready["ready"] is True and ready["checks"]["bus"] == "ok", ready
    models = await get_json(f"{proxy.base}/v1/models", user())
    assert "fake-slow" in [model["id"] for model in models["data"]]


async def test_metrics_are_not_served_through_the_proxy(
    proxy: Proxy, replicas: list[GatewayProcess]
) -> None:
    """Prometheus scrapes each replica on its own port; through the proxy: 404."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.base}/metrics") as resp:
            assert resp.status == 404, await resp.text()
        for replica in replicas:
            async with http.get(f"{replica.url}/metrics") as resp:
                assert resp.status == 200
                assert "gateway_connections_opened_total" in await resp.text()


async def sessions_by_replica(replicas: list[GatewayProcess]) -> dict[str, set[str]]:
    """Each replica's Engine.IO sessions, from its registry on Redis (`sessions:<id>`)."""
    prefix = replicas[0].env["GATEWAY_REDIS_KEY_PREFIX"]
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}sessions:*")]
        return {key: set(await client.smembers(key)) for key in keys}
    finally:
        await client.aclose()


async def test_sockets_are_spread_over_both_replicas(
    proxy: Proxy, replicas: list[GatewayProcess]
) -> None:
    """Twelve browsers opening Socket.IO straight over websocket (the web app's default):
    both replicas get some (nginx balances them; Caddy's cookie policy picks a replica
    at random for a client without its cookie)."""
    before = await sessions_by_replica(replicas)
    sockets = [
        await PySocket().connect(proxy.origin, user(), ["websocket"], path=proxy.sio_path)
        for _ in range(12)
    ]
    try:
        after = await sessions_by_replica(replicas)
    finally:
        for sock in sockets:
            await sock.close()
    gained = {key for key, sids in after.items() if sids - before.get(key, set())}
    assert len(gained) == 2, {key: len(sids) for key, sids in after.items()}


# -- Socket.IO (Open WebUI) ------------------------------------------------------------------
@pytest.mark.parametrize("transports", ["websocket", "polling", "polling,websocket"])
async def test_the_js_socketio_client_completes_chats(proxy: Proxy, transports: str) -> None:
    """socket.io-client as the web app runs it: the socket through the sticky upstream,
    the turns POSTed through the other; over polling every long-poll of the session
    must reach one replica (the proxy's affinity cookie, kept as a browser keeps it)."""
    token = user()
    js = await JSSocket().start(
        proxy.origin,
        token,
        transports=transports,
        replies=3,
        path=proxy.sio_path,
        with_credentials=True,
    )
    try:
        bodies = []
        for n in range(3):
            body = turn_body(js.sid, f"through {proxy.name} {transports} {n}")
            await post_json(f"{proxy.base}/api/chat/completions", token, body)
            bodies.append(body)
        await js.wait_for("done", timeout_s=30)
    finally:
        await js.close()
    for body in bodies:
        question = body["user_message"]["content"]
        assert text_of(js.events, body["id"]) == expected(question)
    trouble = [
        line
        for line in js.lines
        if line["kind"] == "error"
        or (line["kind"] == "disconnected" and line["reason"] != "io client disconnect")
    ]
    assert trouble == []
    upgraded = [line["transport"] for line in js.lines if line["kind"] == "upgraded"]
    assert upgraded == (["websocket"] if transports == "polling,websocket" else [])


async def test_polling_clients_that_keep_no_cookies_stay_on_one_replica(proxy: Proxy) -> None:
    """Node's socket.io-client as it runs by default (no cookie jar), over long-polling
    only: every request of its session must reach the replica that holds it (a poll
    that lands on the other gets 400), for each of several clients in turn."""
    token = user()
    for n in range(3):
        js = await JSSocket().start(
            proxy.origin,
            token,
            transports="polling",
            replies=1,
            path=proxy.sio_path,
            with_credentials=False,
        )
        try:
            body = turn_body(js.sid, f"cookieless {proxy.name} {n}")
            await post_json(f"{proxy.base}/api/chat/completions", token, body)
            await js.wait_for("done", timeout_s=30)
        finally:
            await js.close()
        trouble = [
            line
            for line in js.lines
            if line["kind"] == "error"
            or (line["kind"] == "disconnected" and line["reason"] != "io client disconnect")
        ]
        assert trouble == [], js.lines
        # The reply as stored and ended (its deltas' first few may race the bus's
        # news that this replica now watches the user: that is the bus's to prove).
        completion = completion_of(js.events, body["id"])
        assert completion["content"] == expected(body["user_message"]["content"])


# -- raw WebSockets (Nadoo, RAGFlow) ---------------------------------------------------------
async def test_a_nadoo_client_completes_a_chat(proxy: Proxy) -> None:
    session = f"px-{uuid.uuid4().hex[:8]}"
    url = f"{proxy.ws_base}/ws/chat/{session}?token={user()}"
    async with websockets.connect(url) as ws:
        connected = json.loads(await ws.recv())
        assert connected["type"] == "connected" and connected["session_id"] == session
        await ws.send(json.dumps({"type": "chat", "content": "nadoo via proxy"}))
        text = ""
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 15)))["type"] != (
            "response_end"
        ):
            if frame["type"] == "text-delta":
                text += frame["text"]
    assert text == frame["full_response"] == expected("nadoo via proxy")


async def test_a_ragflow_websocket_client_completes_a_chat(proxy: Proxy) -> None:
    """websocket-client, as RAGFlow's WebSocket API reference uses it."""
    key = await ragflow_key(proxy)
    made = await post_json(f"{proxy.base}/ragflow/api/v1/chats", key, {"name": "wx"})
    question = {"type": "chat", "chat_id": made["data"]["id"], "question": "mini program?"}

    def talk() -> str:
        ws = websocket.create_connection(f"{proxy.ws_base}/v1/ws/chat?token={key}", timeout=15)
        try:
            ws.send(json.dumps(question))
            answer = ""
            while (frame := json.loads(ws.recv()))["data"] is not True:
                assert frame["code"] == 0, frame
                answer += frame["data"]["answer"]  # deltas, as its WebSocket clients append
            return answer
        finally:
            ws.close()

    assert await asyncio.to_thread(talk) == expected("mini program?")


# -- SSE (OpenAI, RAGFlow) -------------------------------------------------------------------
def spread(arrivals: list[float]) -> float:
    """Seconds between the first and the last chunk's arrival."""
    return arrivals[-1] - arrivals[0]


async def test_openai_streaming_arrives_chunk_by_chunk(proxy: Proxy) -> None:
    """fake-slow takes ~1.3 s for 64 deltas: through a buffering proxy they would all
    arrive at once at the end."""
    client = openai.AsyncOpenAI(base_url=f"{proxy.base}/v1", api_key=user())
    arrivals, text = [], ""
    stream = await client.chat.completions.create(
        model="fake-slow", messages=[{"role": "user", "content": "slowly"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    await client.close()
    assert text == expected("slowly", "fake-slow")
    assert len(arrivals) > 10 and spread(arrivals) > 0.6, (len(arrivals), spread(arrivals))


async def test_ragflow_sdk_streams_chunk_by_chunk(proxy: Proxy) -> None:
    key = await ragflow_key(proxy)

    def ask() -> tuple[list[str], list[float]]:
        rag = RAGFlow(api_key=key, base_url=f"{proxy.base}/ragflow")
        llm = Chat.LLM(rag, {"model_name": "fake-slow"})
        chat = rag.create_chat(f"sdk-{uuid.uuid4().hex[:6]}", llm=llm)
        contents, arrivals = [], []
        for message in chat.create_session().ask("sdk via proxy", stream=True):
            contents.append(message.content)
            arrivals.append(time.monotonic())
        return contents, arrivals

    contents, arrivals = await asyncio.to_thread(ask)
    assert contents[-1] == expected("sdk via proxy", "fake-slow")
    assert len(arrivals) > 10 and spread(arrivals) > 0.6, (len(arrivals), spread(arrivals))


# -- the affinity cookie ---------------------------------------------------------------------
@pytest.mark.parametrize("slash", ["/", ""], ids=["path/", "path-without-slash"])
async def test_polling_sessions_stay_on_one_replica_without_cookies_too(
    proxy: Proxy, slash: str
) -> None:
    """Clients that keep no cookies (a WeChat mini-program's wx.request does not) are
    still sticky behind nginx: the address is the affinity key then.  Caddy's cookie
    policy needs the cookie, so there we keep one as a browser would.  Some clients
    leave out the trailing / of the Socket.IO path (`addTrailingSlash: false`)."""
    jar: aiohttp.abc.AbstractCookieJar = (
        aiohttp.DummyCookieJar()
        if proxy.name.startswith("nginx")
        else aiohttp.CookieJar(unsafe=True)
    )
    url = f"{proxy.origin}{proxy.sio_path}{slash}?EIO=4&transport=polling"
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        for _ in range(8):
            async with http.get(url) as resp:
                opened = json.loads((await resp.text())[1:])
            sid_url = f"{url}&sid={opened['sid']}"
            async with http.post(sid_url, data=f'40{{"token":"{user()}"}}') as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(sid_url) as resp:
                assert resp.status == 200 and (await resp.text()).startswith("40"), resp.status


async def test_nginx_balances_sockets_opened_straight_over_websocket(
    proxies: dict[str, Proxy],
) -> None:
    """Only polling sessions are pinned: four sockets from one address, opened over
    websocket as the web app does by default, are spread over both replicas."""
    proxy = proxies["nginx-root"]
    sockets = [
        await PySocket().connect(proxy.origin, user(), ["websocket"], path=proxy.sio_path)
        for _ in range(4)
    ]
    for sock in sockets:
        await sock.close()

    def replicas_used() -> set[str]:
        return {
            replica
            for request, replica in proxy.upstreams()
            if "transport=websocket" in request and "sid=" not in request
        }

    for _ in range(100):  # nginx logs a socket when it has closed
        if len(replicas_used()) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(replicas_used()) == 2, proxy.upstreams()


async def test_the_session_cookie_belongs_to_the_sub_path(proxy: Proxy) -> None:
    """Under /chat the proxy says so (X-Forwarded-Prefix): the sign-in cookie is
    scoped to /chat/, not to every application on the host."""
    email = f"cookie-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": "correct horse", "name": "c"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.base}/api/v1/auths/signup", json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.cookies["token"]["path"] == proxy.prefix + "/"
        async with http.get(f"{proxy.base}/api/v1/auths/signout") as resp:
            assert resp.cookies["token"]["path"] == proxy.prefix + "/"
            assert resp.cookies["token"].value == ""


async def test_the_address_itself_says_where_everything_is(proxy: Proxy) -> None:
    """What an operator sees opening the gateway's address (`/chat` redirects here)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.base) as resp:
            assert resp.status == 200 and resp.url.path == proxy.prefix + "/"
            index = await resp.json()
    assert index["openai"] == f"{proxy.prefix}/v1"
    assert index["openwebui_socketio_path"] == proxy.sio_path


# -- forwarded headers a client writes itself --------------------------------------------------
FORGED = {
    "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
}


async def test_a_client_cannot_forge_what_the_proxy_tells_the_gateway(proxy: Proxy) -> None:
    """The gateway believes forwarded headers from the proxy; the proxy must therefore
    not pass on a client's own.  Forged over plain http: no Secure cookie, no foreign
    prefix, and the forged host does not make a foreign origin look like our own."""
    email = f"forged-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": "correct horse", "name": "f"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy.base}/api/v1/auths/signup", json=body, headers=FORGED
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert not resp.cookies["token"]["secure"]
            assert resp.cookies["token"]["path"] == proxy.prefix + "/"
        async with http.get(proxy.base + "/", headers=FORGED) as resp:
            assert (await resp.json())["openai"] == f"{proxy.prefix}/v1"
        handshake = f"{proxy.origin}{proxy.sio_path}/?EIO=4&transport=polling"
        for origin, status in (("http://evil.example", 403), (proxy.origin, 200)):
            async with http.get(handshake, headers={**FORGED, "Origin": origin}) as resp:
                assert resp.status == status, (origin, await resp.text())
