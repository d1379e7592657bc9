"""What the gateway gives away (issue 13, hole 7): `/ready` showed the model servers' URLs
with their passwords and the Redis URL to anyone, and probed every model server on every
call; client errors quoted the model server's URL and its error body; `Server` named the
aiohttp and Python versions.  Each is shown closed here against real processes.

SECURITY.md, section "What errors and health checks reveal", says what the gateway
decides and why.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream, free_port
from tests.gatewayproc import GatewayProcess, make_token

UPSTREAM_PASSWORD = "up-secret-pw-4711"
REDIS_PASSWORD = "redis-secret-pw-0815"
ADMIN = {"email": "admin@example.com", "password": "correct horse battery staple"}
TRADEMARKS = ("aiohttp", "Python", "/3.")


def with_password(url: str) -> str:
    return url.replace("http://", f"http://gw-user:{UPSTREAM_PASSWORD}@")


@pytest.fixture(scope="module")
def hanging() -> Iterator[FakeUpstream]:
    """A model server whose model list never comes (within any timeout of ours)."""
    fake = FakeUpstream().start()
    fake.models_delay_s = 30
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def exposed(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Secrets in both URLs, and Redis down: what /ready used to print in full."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("exposed"),
        {
            "OPENAI_API_BASE_URL": with_password(fake_upstream.url),
            "WEBSOCKET_MANAGER": "redis",
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
        },
    ).start()
    # The first user to sign up is the admin: before any other user exists.
    request = urllib.request.Request(
        proc.url + "/api/v1/auths/signup",
        data=json.dumps(ADMIN).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.load(resp)["role"] == "admin"
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def beside_a_hanging_server(
    fake_upstream: FakeUpstream, hanging: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(
        tmp_path_factory.mktemp("hanging"),
        {
            "OPENAI_API_BASE_URLS": f"{fake_upstream.url};{hanging.url}",
            "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S": "1",
        },
    ).start()
    yield proc
    proc.stop()


async def admin_token(http: aiohttp.ClientSession, gw: GatewayProcess) -> str:
    async with http.post(gw.url + "/api/v1/auths/signin", json=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])


async def ready(
    http: aiohttp.ClientSession, gw: GatewayProcess, token: str | None = None, query: str = ""
) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{gw.url}/ready{query}", headers=headers) as resp:
        text = await resp.text()
        return resp.status, text, await resp.json(content_type=None)


# -- /ready ---------------------------------------------------------------------------------
async def test_anonymous_ready_says_only_ok_or_failed(
    exposed: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as http:
        status, text, body = await ready(http, exposed)
        user_token = make_token(f"someone-{uuid.uuid4().hex[:6]}")
        as_user = await ready(http, exposed, user_token)
    assert status == 503
    for secret in (UPSTREAM_PASSWORD, REDIS_PASSWORD, "redis://", "127.0.0.1", str(fake_upstream.port)):
        assert secret not in text, secret
    assert body == {
        "ready": False,
        "checks": {"bus": "failed", "store": "ok", "upstream 1": "ok", "upstream 2": "ok"},
    }
    # An ordinary user's token shows no more.
    assert as_user[0] == 503 and as_user[2] == body


async def test_admin_sees_what_failed_masked(
    exposed: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as http:
        token = await admin_token(http, exposed)
        status, text, body = await ready(http, exposed, token)
        bad = await ready(http, exposed, "not-a-token")
    assert status == 503
    assert UPSTREAM_PASSWORD not in text and REDIS_PASSWORD not in text
    assert "Redis at redis://:***@127.0.0.1" in body["checks"]["bus"]
    assert body["checks"]["store"] == "ok" and body["checks"]["upstream 1"] == "ok"
    assert body["upstreams"] == {
        "upstream 1": f"http://gw-user:***@127.0.0.1:{fake_upstream.port}/v1",
        "upstream 2": "demo",
    }
    # A token offered must be good.
    assert bad[0] == 401


async def test_ready_storm_probes_a_hanging_server_a_handful_of_times(
    beside_a_hanging_server: GatewayProcess, hanging: FakeUpstream
) -> None:
    gw = beside_a_hanging_server
    token = make_token("chatter")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

    async def chat_s(http: aiohttp.ClientSession) -> float:
        started = time.monotonic()
        async with http.post(
            gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        return time.monotonic() - started

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await chat_s(http)  # the model lists are fetched once (the hanging one times out)
        before = statistics.median([await chat_s(http) for _ in range(5)])
        probes_before = hanging.models_calls
        started = time.monotonic()
        storm = [asyncio.create_task(ready(http, gw)) for _ in range(200)]
        await asyncio.sleep(0.5)
        during = statistics.median([await chat_s(http) for _ in range(5)])
        answers = await asyncio.gather(*storm)
        # Callers after the first round get the kept result, or share the next round.
        again = await asyncio.gather(*(ready(http, gw) for _ in range(200)))
        took = time.monotonic() - started
    probes = hanging.models_calls - probes_before
    assert probes <= 3, probes
    assert during < before + 0.5, (before, during)
    for status, _, answer in [*answers, *again]:
        assert status == 503
        assert answer["checks"]["upstream 1"] == "ok"
        assert answer["checks"]["upstream 2"] == "failed"
    assert took < 15, took


async def test_ready_result_is_kept_briefly_only(start_gateway: Any) -> None:
    """A load balancer still sees a change within a few seconds."""
    fake = FakeUpstream().start()
    gw = start_gateway({"OPENAI_API_BASE_URL": fake.url})
    async with aiohttp.ClientSession() as http:
        assert (await ready(http, gw))[0] == 200
        fake.stop()
        assert (await ready(http, gw))[0] == 200  # the kept result
        started = time.monotonic()
        while (answer := await ready(http, gw))[0] != 503:
            assert time.monotonic() - started < 4
            await asyncio.sleep(0.1)
    assert answer[2]["checks"]["upstream 1"] == "failed"


# -- client errors --------------------------------------------------------------------------
async def openai_error(gw: GatewayProcess, model: str, path: str = "/v1/chat/completions") -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {make_token('erring')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.text()


async def test_upstream_errors_name_the_model_not_the_server(
    exposed: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    for path in ("/v1/chat/completions", "/api/chat/completions"):
        status, text = await openai_error(exposed, "fake-error", path)
        assert status == 502, text
        assert "The model server for 'fake-error' answered HTTP 500" in text
        for leaked in ("fake failure", "127.0.0.1", str(fake_upstream.port), UPSTREAM_PASSWORD):
            assert leaked not in text, (path, leaked)
        status, text = await openai_error(exposed, "fake-dies", path)
        assert "The model server for 'fake-dies' broke off the reply" in text
        assert "127.0.0.1" not in text and UPSTREAM_PASSWORD not in text
    # What the client does not see, the operator does (masked).
    log = exposed.log()
    assert "fake failure" in log and "gw-user:***@127.0.0.1" in log
    assert UPSTREAM_PASSWORD not in log and REDIS_PASSWORD not in log


async def test_unreachable_server_is_not_named(start_gateway: Any) -> None:
    dead = f"http://gw-user:{UPSTREAM_PASSWORD}@127.0.0.1:{free_port()}/v1"
    gw = start_gateway({"OPENAI_API_BASE_URL": dead, "GATEWAY_DEMO_MODEL": "false"})
    status, text = await openai_error(gw, "llama3")
    assert status == 502
    assert "not available" in text and "unreachable" in text
    assert "127.0.0.1" not in text and UPSTREAM_PASSWORD not in text


# -- Server ----------------------------------------------------------------------------------
async def test_server_header_names_no_version(exposed: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("GET", "/health"),
            ("GET", "/nowhere"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/ws/socket.io/?EIO=4&transport=polling"),
        ):
            async with http.request(method, exposed.url + path) as resp:
                server = resp.headers.get("Server", "")
                assert not any(mark in server for mark in TRADEMARKS), (path, server)
    # aiohttp's own answer to a request it cannot parse, before any route.
    reader, writer = await asyncio.open_connection("127.0.0.1", exposed.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.split(b" ", 2)[1] == b"400"
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "Server: chat-gateway" in head and "aiohttp" not in head, head
