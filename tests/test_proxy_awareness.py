"""Behind a reverse proxy, without one: real gateway processes and real clients.

* forwarded headers change what the gateway believes only from a trusted peer
  (loopback by default): the origin check, the sign-in cookie; from anyone else
  they are ignored, and that is logged once;
* `GATEWAY_BASE_PATH`: every flavour under it, a redirect to it, and 404s outside
  it that say where the gateway is;
* the answers that name a proxy's mistake: 426 on a WebSocket path reached
  without `Upgrade`, 400 naming sticky sessions when a Socket.IO poll reaches a
  replica that does not hold its session.

The proxies themselves (nginx, Caddy) are in tests/proxy/.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
import socketio
import websockets

from tests.clients import turn_body
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import fresh_pg_database

# A client at https://chat.example.com:8443, as a proxy on loopback reports it.
ORIGIN = "https://chat.example.com:8443"
PROXY_HEADERS = {
    "x-forwarded": {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "chat.example.com:8443",
    },
    "forwarded": {"Forwarded": 'for="203.0.113.7";proto=https;host="chat.example.com:8443"'},
}
# Origins allowed besides the gateway's own: not the client's.
ELSEWHERE = {"CORS_ALLOW_ORIGIN": "https://elsewhere.example"}
IGNORED_LINE = "forwarded headers from an untrusted peer ignored"
UPGRADE_LINES = (
    "proxy_set_header Upgrade $http_upgrade;",
    "proxy_set_header Connection $connection_upgrade;",
    "map $http_upgrade $connection_upgrade",
)
T = TypeVar("T")
STICKY = ("sticky", "hash $gw_affinity consistent;", "ip_hash", "lb_policy cookie")


def user() -> tuple[str, str]:
    user_id = f"proxy-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id, name=user_id.upper())


def root_of(gateway: GatewayProcess) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """Status, JSON body (or text) and the response, redirects not followed."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, json=body, allow_redirects=False) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text), resp
        except ValueError:
            return resp.status, text, resp


def message_of(error: dict[str, Any]) -> str:
    """An error's text in any flavour's shape: Open WebUI's `detail`, RAGFlow's
    `message`, OpenAI's `error.message`."""
    if "error" in error:
        return str(error["error"]["message"])
    return str(error.get("detail", error.get("message")))


@dataclass
class Socket:
    """A connected python-socketio client, and the Open WebUI `events` it received."""

    client: socketio.AsyncClient
    events: list[dict[str, Any]]

    def completion(self) -> dict[str, Any] | None:
        done = [e for e in self.events if e["data"]["type"] == "chat:completion"]
        return dict(done[0]["data"]["data"]) if done else None


@asynccontextmanager
async def socketio_client(
    url: str,
    token: str | None = None,
    transports: list[str] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "ws/socket.io",
) -> AsyncIterator[Socket]:
    """python-socketio's AsyncClient, connected (ConnectionError if refused)."""
    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        sock = Socket(client, [])
        client.on("events", sock.events.append)
        await client.connect(
            url,
            socketio_path=path,
            auth={"token": token} if token else None,
            transports=transports or ["websocket"],
            headers=headers or {},
            wait_timeout=10,
        )
        try:
            yield sock
        finally:
            await client.disconnect()


async def until(condition: Callable[[], Awaitable[T | None]], timeout_s: float = 10) -> T:
    """Poll `condition()` until it returns something (not None, not empty)."""
    deadline = time.monotonic() + timeout_s
    while not (result := await condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return result


# -- forwarded headers: believed from a trusted peer only ------------------------------
@dataclass
class Seen:
    """What a client at ORIGIN, behind a proxy that sent some headers, observes."""

    preflight: int  # a CORS preflight's status
    websocket: int  # a raw WebSocket handshake's status (101: accepted)
    socketio: bool  # a Socket.IO connect completed
    secure_cookie: bool  # the sign-in cookie came marked Secure


ACCEPTED = Seen(preflight=204, websocket=101, socketio=True, secure_cookie=True)
REFUSED = Seen(preflight=403, websocket=403, socketio=False, secure_cookie=False)


async def observe(gateway: GatewayProcess, forwarded: dict[str, str]) -> Seen:
    headers = {"Origin": ORIGIN, **forwarded}
    return Seen(
        preflight=await preflight(gateway, headers),
        websocket=await websocket_handshake(gateway, headers),
        socketio=await socketio_connects(gateway, headers),
        secure_cookie=await signin_cookie_is_secure(gateway, headers),
    )


async def preflight(gateway: GatewayProcess, headers: dict[str, str]) -> int:
    status, _, resp = await fetch(
        f"{gateway.url}/api/v1/chats/",
        "OPTIONS",
        {**headers, "Access-Control-Request-Method": "GET"},
    )
    if status == 204:
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    return status


async def websocket_handshake(gateway: GatewayProcess, headers: dict[str, str]) -> int:
    _, token = user()
    url = f"ws://127.0.0.1:{gateway.port}/ws/chat/s-{uuid.uuid4().hex[:6]}?token={token}"
    try:
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def socketio_connects(gateway: GatewayProcess, headers: dict[str, str]) -> bool:
    _, token = user()
    try:
        async with socketio_client(gateway.url, token, headers=headers) as sock:
            return bool(sock.client.connected)
    except socketio.exceptions.ConnectionError:
        return False


async def signin_cookie_is_secure(gateway: GatewayProcess, headers: dict[str, str]) -> bool:
    credentials = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse"}
    for step in ("signup", "signin"):
        status, _, resp = await fetch(
            f"{gateway.url}/api/v1/auths/{step}", "POST", headers, credentials
        )
        assert status == 200
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("token="))
    return "secure" in [attribute.strip().lower() for attribute in cookie.split(";")]


@pytest.mark.parametrize("style", PROXY_HEADERS)
async def test_a_trusted_proxy_is_believed_about_scheme_and_host(
    start_gateway: Any, style: str
) -> None:
    # Loopback is trusted by default; the client's origin is not in the allowlist,
    # so only the forwarded host makes it the gateway's own.
    gateway = start_gateway(ELSEWHERE)
    assert await observe(gateway, PROXY_HEADERS[style]) == ACCEPTED
    assert await observe(gateway, {}) == REFUSED
    assert IGNORED_LINE not in gateway.log()


@pytest.mark.parametrize("style", PROXY_HEADERS)
async def test_an_untrusted_peer_is_ignored_and_logged_once(start_gateway: Any, style: str) -> None:
    gateway = start_gateway({**ELSEWHERE, "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"})
    # Several requests (a preflight, two handshakes, sign-up, sign-in), twice.
    assert await observe(gateway, PROXY_HEADERS[style]) == REFUSED
    assert await observe(gateway, PROXY_HEADERS[style]) == REFUSED
    lines = [line for line in gateway.log().splitlines() if IGNORED_LINE in line]
    assert len(lines) == 1, lines
    assert 'peer="127.0.0.1"' in lines[0] and "GATEWAY_TRUSTED_PROXIES" in lines[0]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8;nonsense"},
            "'nonsense' is not an address or a CIDR",
        ),
        ({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/33"}, "'10.0.0.0/33' is not an address or a CIDR"),
        ({"GATEWAY_BASE_PATH": "chat"}, "GATEWAY_BASE_PATH='chat': not a path like /chat"),
    ],
)
def test_a_bad_proxy_setting_stops_the_start(
    start_gateway: Any, env: dict[str, str], named: str
) -> None:
    with pytest.raises(RuntimeError, match="gateway exited") as refused:
        start_gateway(env)
    setting = next(iter(env))
    assert f"configuration error: {setting}=" in str(refused.value)
    assert named in str(refused.value)


# -- GATEWAY_BASE_PATH ---------------------------------------------------------------
@pytest.fixture(scope="module")
def under_chat(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with GATEWAY_BASE_PATH=/chat; its `url` ends in /chat, as clients use it."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("under-chat"),
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_BASE_PATH": "/chat"},
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


async def test_rest_health_and_openai_under_the_base_path(under_chat: GatewayProcess) -> None:
    _, token = user()
    bearer = {"Authorization": f"Bearer {token}"}
    status, health, _ = await fetch(f"{under_chat.url}/health")
    assert (status, health) == (200, {"status": True})
    history = {"currentId": "u1", "messages": {"u1": {"id": "u1", "role": "user", "content": "hi"}}}
    status, made, _ = await fetch(
        f"{under_chat.url}/api/v1/chats/new",
        "POST",
        bearer,
        {"chat": {"title": "Under /chat", "history": history}},
    )
    assert status == 200, made
    status, got, _ = await fetch(f"{under_chat.url}/api/v1/chats/{made['id']}", headers=bearer)
    assert status == 200 and got["chat"]["title"] == "Under /chat"

    messages = [{"role": "user", "content": "streamed under /chat"}]
    async with openai.AsyncOpenAI(
        base_url=f"{under_chat.url}/v1", api_key=token, max_retries=0
    ) as client:
        models = [model.id async for model in client.models.list()]
        assert "fake-model" in models
        stream = await client.chat.completions.create(
            model="fake-model", messages=messages, stream=True
        )
        deltas = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert len(deltas) > 1
    assert "".join(d or "" for d in deltas) == reply_text("fake-model", messages)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_under_the_base_path_gets_a_reply(
    under_chat: GatewayProcess, transport: str
) -> None:
    _, token = user()
    question = f"socket.io over {transport} under /chat"
    # The client's path is relative to the URL's host: the base path goes in it.
    async with socketio_client(
        root_of(under_chat), token, [transport], path="chat/ws/socket.io"
    ) as sock:
        assert sock.client.transport() == transport
        body = turn_body(sock.client.get_sid(), question)
        status, answer, _ = await fetch(
            f"{under_chat.url}/api/chat/completions",
            "POST",
            {"Authorization": f"Bearer {token}"},
            body,
        )
        assert status == 200 and answer["status"] is True

        async def completion() -> dict[str, Any] | None:
            return sock.completion()

        finished = await until(completion)
    assert finished["done"] is True
    assert finished["content"] == reply_text("fake-model", [{"role": "user", "content": question}])


async def test_a_raw_websocket_under_the_base_path(under_chat: GatewayProcess) -> None:
    _, token = user()
    session = f"s-{uuid.uuid4().hex[:6]}"
    url = f"ws://127.0.0.1:{under_chat.port}/chat/ws/chat/{session}?token={token}"
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["session_id"] == session
        await ws.send(json.dumps({"type": "chat", "content": "nadoo under /chat"}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == "response_end":
                break
    expected = reply_text("fake-model", [{"role": "user", "content": "nadoo under /chat"}])
    assert frame["full_response"] == expected
    # The same path without Upgrade: the 426 is found under the base path too.
    status, body, _ = await fetch(f"{under_chat.url}/ws/chat/{session}")
    assert status == 426 and UPGRADE_LINES[0] in body["detail"]


@pytest.mark.parametrize(
    ("headers", "query", "location"),
    [
        ({}, "", "/chat/"),
        ({}, "?lang=en", "/chat/?lang=en"),
        # The proxy strips /outer and says so: the client must be sent back under it.
        ({"X-Forwarded-Prefix": "/outer"}, "", "/outer/chat/"),
    ],
)
async def test_the_base_path_without_its_slash_redirects(
    under_chat: GatewayProcess, headers: dict[str, str], query: str, location: str
) -> None:
    status, _, resp = await fetch(f"{root_of(under_chat)}/chat{query}", headers=headers)
    assert status == 301 and resp.headers["Location"] == location


@pytest.mark.parametrize(
    "path", ["/health", "/api/v1/chats/", "/ws/chat/s1", "/ws/socket.io/?EIO=4&transport=polling"]
)
async def test_a_route_outside_the_base_path_is_a_404_that_says_where(
    under_chat: GatewayProcess, path: str
) -> None:
    status, body, _ = await fetch(f"{root_of(under_chat)}{path}")
    assert status == 404
    route = path.partition("?")[0]
    assert body["detail"].startswith(f"No route for GET {route}. The gateway lives under /chat")
    assert f"ask for /chat{route}" in body["detail"]
    assert "X-Forwarded-Prefix: /chat" in body["detail"]


async def test_an_openai_client_at_the_root_reads_the_hint(under_chat: GatewayProcess) -> None:
    _, token = user()
    async with openai.AsyncOpenAI(
        base_url=f"{root_of(under_chat)}/v1", api_key=token, max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.list()
    # In the OpenAI shape, so the SDK shows the message.
    assert isinstance(missing.value.body, dict)
    assert "The gateway lives under /chat" in missing.value.body["message"]


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        # An unknown path among the gateway's own: no prefix to blame.
        ("/api/v1/nope", None),
        ("/ragflow/v1/nope", None),
        ("/favicon.ico", None),
        # A gateway route under a prefix nobody stripped.
        ("/chat/api/v1/chats/", "/chat"),
        ("/chat/v1/ws/chat", "/chat"),
        ("/a/b/health", "/a/b"),
    ],
)
async def test_a_404_under_an_unstripped_prefix_names_it(
    gateway: GatewayProcess, path: str, hint: str | None
) -> None:
    status, body, _ = await fetch(f"{gateway.url}{path}")
    assert status == 404
    if hint is None:
        assert message_of(body) == f"No route for GET {path}"
    else:
        assert f"reached under {hint}: set GATEWAY_BASE_PATH={hint}" in message_of(body)
        assert f"X-Forwarded-Prefix: {hint}" in message_of(body)


async def test_a_404_under_the_base_path_and_another_prefix(under_chat: GatewayProcess) -> None:
    status, body, _ = await fetch(f"{under_chat.url}/app/api/v1/chats/")
    assert status == 404
    assert "reached under /chat/app: set GATEWAY_BASE_PATH=/chat/app" in body["detail"]


# -- WebSocket paths without Upgrade: 426 ----------------------------------------------
WS_PATHS = [
    "/ws/chat/s1",
    "/api/ws/chat/s1",
    "/ws/notifications/u1",
    "/v1/ws/chat",
    "/ragflow/api/v1/ws/chats/c1/completions",
    "/ws/socket.io/?EIO=4&transport=websocket",
]


@pytest.mark.parametrize("path", WS_PATHS)
async def test_a_websocket_path_without_upgrade_is_426_naming_the_lines(
    gateway: GatewayProcess, path: str
) -> None:
    # What a proxy that drops hop-by-hop headers passes on: a plain HTTP/1.1 GET.
    status, body, _ = await fetch(f"{gateway.url}{path}")
    assert status == 426
    assert "reached it without 'Upgrade: websocket'" in body["detail"]
    assert "dropped the upgrade headers" in body["detail"]
    for line in UPGRADE_LINES:
        assert line in body["detail"]


async def http10_get(gateway: GatewayProcess, path: str) -> tuple[str, dict[str, Any]]:
    """A GET as nginx sends it with its default `proxy_http_version 1.0`: the status
    line and the JSON body (the server closes the connection after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


@pytest.mark.parametrize("path", ["/ws/chat/s1", "/ws/socket.io/?EIO=4&transport=websocket"])
async def test_a_websocket_path_over_http10_is_426_naming_proxy_http_version(
    gateway: GatewayProcess, path: str
) -> None:
    status_line, body = await http10_get(gateway, path)
    assert status_line.split(" ")[1] == "426"
    assert "arrived as HTTP/1.0" in body["detail"]
    assert "proxy_http_version 1.1;" in body["detail"]


# -- Socket.IO polling across replicas: sticky sessions --------------------------------
@pytest.fixture
async def replicas(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[tuple[GatewayProcess, GatewayProcess]]:
    """Replicas A and B on one Redis (a key prefix of their own) and one fresh database."""
    async with fresh_pg_database() as database_url:
        env = {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "WEBSOCKET_MANAGER": "redis",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "GATEWAY_REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
            "DATABASE_URL": database_url,
        }
        a, b = GatewayProcess(tmp_path / "a", env), GatewayProcess(tmp_path / "b", env)
        try:
            yield a.start(), b.start()
        finally:
            a.stop()
            b.stop()


def poll_url(gateway: GatewayProcess, eio_sid: str) -> str:
    return f"{gateway.url}/ws/socket.io/?EIO=4&transport=polling&sid={eio_sid}"


async def refusal(gateway: GatewayProcess, method: str, eio_sid: str, saying: str) -> str:
    """The 400 a replica gives a poll for `eio_sid`, once it says `saying`: sessions are
    registered on the bus in the background, so the first answers may be older news."""

    async def answer() -> str | None:
        body = "40" if method == "POST" else None  # a Socket.IO CONNECT
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, poll_url(gateway, eio_sid), data=body) as resp,
        ):
            assert resp.status == 400
            detail: str = (await resp.json())["detail"]
        return detail if saying in detail else None

    return await until(answer)


async def test_a_poll_reaching_the_wrong_replica_names_sticky_sessions(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    user_id, token = user()
    async with socketio_client(a.url, token, ["polling"]) as sock:
        client = sock.client
        eio_sid = client.eio.sid
        for method in ("GET", "POST"):
            detail = await refusal(b, method, eio_sid, "lives on another replica")
            assert detail.startswith("Session ID unknown here: it lives on another replica (")
            for fix in STICKY:
                assert fix in detail
        # B's refusals did not touch the session: it still answers on A.
        joined = await client.call("user-join", {"auth": {"token": token}}, timeout=10)
        assert joined == {"id": user_id, "name": user_id.upper()}
        assert client.eio.sid == eio_sid
    # Once it ended on A, B no longer points at A.
    detail = await refusal(b, "GET", eio_sid, "it expired")
    assert "another replica" not in detail


async def test_the_connect_right_after_the_handshake_reaching_the_wrong_replica(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    # socket.io-client's second request (its CONNECT packet) is the first that a
    # proxy without stickiness sends elsewhere: the session must be known by then.
    a, b = replicas
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{a.url}/ws/socket.io/?EIO=4&transport=polling") as resp,
    ):
        assert resp.status == 200
        opened = await resp.text()
    eio_sid = json.loads(opened.removeprefix("0"))["sid"]
    detail = await refusal(b, "POST", eio_sid, "lives on another replica")
    assert "sticky" in detail
    # The same CONNECT on A, where the session lives, connects.
    async with aiohttp.ClientSession() as http:
        async with http.post(poll_url(a, eio_sid), data="40") as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
        async with http.get(poll_url(a, eio_sid)) as resp:
            assert resp.status == 200 and (await resp.text()).startswith('40{"sid":')


async def test_an_unknown_session_is_400_saying_it_expired(
    replicas: tuple[GatewayProcess, GatewayProcess], gateway: GatewayProcess
) -> None:
    # On a replica of two (Redis) and on a gateway alone (no bus to ask).
    for where in (*replicas, gateway):
        for method in ("GET", "POST"):
            detail = await refusal(where, method, uuid.uuid4().hex, "it expired")
            assert detail.startswith("Session ID unknown: it expired, or the replica holding it")
            assert "If this repeats with several replicas" in detail and "sticky" in detail
