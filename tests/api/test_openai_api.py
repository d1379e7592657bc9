"""The OpenAI flavour end to end: the real `openai` package and raw HTTP against a
gateway process, with the fake upstream on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import jwt
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, free_port, reply_text
from tests.gatewayproc import SECRET, GatewayProcess, make_token

API_KEY = "sk-" + "a" * 32  # configured for user "keyuser" in conftest
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def client(gateway: GatewayProcess, token: str, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + prefix, api_key=token, max_retries=0)


def collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def raw_stream(
    url: str, body: dict[str, Any], token: str
) -> tuple[aiohttp.ClientResponse, list[str]]:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
        payloads = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                payloads.append(line[6:].decode().strip())
        resp.release()
        return resp, payloads


def test_the_sdk_retrieves_one_model_or_is_told_it_does_not_exist(
    gateway: GatewayProcess, alice_token: str
) -> None:
    sdk = client(gateway, alice_token)
    listed = {model.id: model for model in sdk.models.list()}
    assert sdk.models.retrieve("fake-model") == listed["fake-model"]
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.models.retrieve("no-such-model")
    assert refused.value.code == "model_not_found"


@pytest.mark.parametrize("prefix", ["/v1", "/api"])
def test_streaming_text_and_usage(gateway: GatewayProcess, alice_token: str, prefix: str) -> None:
    stream = client(gateway, alice_token, prefix).chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = collect(stream)
    assert text == reply_text("fake-model", MESSAGES)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 22 and chunks[-1].usage.prompt_tokens == 11
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_streaming_without_usage_has_no_usage_chunk(
    gateway: GatewayProcess, alice_token: str
) -> None:
    text, chunks = collect(
        client(gateway, alice_token).chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
    )
    assert text == reply_text("fake-model", MESSAGES)
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("stream", [True, False])
def test_a_lone_surrogate_from_the_upstream_is_replaced_not_fatal(
    gateway: GatewayProcess, alice_token: str, stream: bool
) -> None:
    # A broken tokenizer can send JSON "\ud83d" without its pair; no client
    # encoding can carry it, so it arrives as U+FFFD, the rest intact.
    answer = client(gateway, alice_token).chat.completions.create(
        model="fake-surrogate", messages=MESSAGES, stream=stream
    )
    text = collect(answer)[0] if stream else answer.choices[0].message.content
    assert text == "ok \ufffd"


def test_upstream_sees_the_conversation(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    marker = [{"role": "user", "content": "marker-7f3a"}]
    client(gateway, alice_token).chat.completions.create(
        model="fake-model", messages=marker, temperature=0.3
    )
    (record,) = fake_upstream.requests_for("marker-7f3a")
    assert record.body["messages"] == marker
    assert record.body["temperature"] == 0.3
    assert record.body["stream"] is True


def test_a_servers_own_options_reach_it_and_unrelayed_ones_are_refused(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    """`extra_body` as the SDK sends it (vLLM's switch for Qwen3's thinking) reaches the
    model server; `logprobs`, which the reply would come back without, is a 400."""
    marker = [{"role": "user", "content": "marker-extra-5d1c"}]
    sdk = client(gateway, alice_token)
    sdk.chat.completions.create(
        model="fake-model",
        messages=marker,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_a": 1},
    )
    (record,) = fake_upstream.requests_for("marker-extra-5d1c")
    assert record.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "top_a" not in record.body  # a name no server we know takes
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="fake-model", messages=marker, logprobs=True)
    assert "'logprobs' is not supported" in str(refused.value)
    assert len(fake_upstream.requests_for("marker-extra-5d1c")) == 1


def test_non_streaming(gateway: GatewayProcess, alice_token: str) -> None:
    reply = client(gateway, alice_token).chat.completions.create(
        model="fake-model", messages=MESSAGES
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == reply_text("fake-model", MESSAGES)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == 33


async def test_sse_wire_shape_and_done(gateway: GatewayProcess, alice_token: str) -> None:
    body = {"model": "fake-reasoner", "messages": MESSAGES, "stream": True}
    resp, payloads = await raw_stream(gateway.url + "/v1/chat/completions", body, alice_token)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert reasoning == "Let me think."
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert set(chunk) >= {"id", "created", "model", "choices"}


def test_usage_is_estimated_when_upstream_reports_none(
    gateway: GatewayProcess, alice_token: str
) -> None:
    reply = client(gateway, alice_token).chat.completions.create(
        model="fake-nousage", messages=MESSAGES
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens == (len(reply_text("fake-nousage", MESSAGES)) + 3) // 4


@pytest.mark.parametrize("prefix", ["/v1", "/api"])
def test_models_merge_upstream_and_demo(
    gateway: GatewayProcess, alice_token: str, prefix: str
) -> None:
    ids = [m.id for m in client(gateway, alice_token, prefix).models.list()]
    assert ids[:2] == ["fake-model", "fake-slow"]
    assert "gateway-demo" in ids


def test_api_key_from_settings(gateway: GatewayProcess) -> None:
    reply = client(gateway, API_KEY).chat.completions.create(
        model="gateway-demo", messages=MESSAGES
    )
    assert "demo" in (reply.choices[0].message.content or "")


def _alg_none_token() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'id': 'alice'})}."


BAD_AUTH = {
    "no token": {},
    "expired": {"Authorization": f"Bearer {make_token('alice', ttl_s=-10)}"},
    "other secret": {
        "Authorization": f"Bearer {make_token('alice', secret='not-the-secret-' + 'x' * 32)}"
    },
    "alg none": {"Authorization": f"Bearer {_alg_none_token()}"},
    "malformed header": {"Authorization": "Token abc"},
    "bearer without token": {"Authorization": "Bearer"},
    "unknown api key": {"Authorization": "Bearer sk-" + "b" * 32},
    "garbage": {"Authorization": "Bearer not.a.jwt"},
}


@pytest.mark.parametrize("case", sorted(BAD_AUTH))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models"])
async def test_bad_credentials_get_401_in_openai_shape(
    gateway: GatewayProcess, case: str, path: str
) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as session:
        method = session.post if path.endswith("completions") else session.get
        async with method(gateway.url + path, json=body, headers=BAD_AUTH[case]) as resp:
            assert resp.status == 401
            error = (await resp.json())["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_token"
    assert error["message"]


async def test_a_token_used_before_is_refused_once_it_expires(gateway: GatewayProcess) -> None:
    # The gateway remembers verified tokens (`edge/auth.py`): not past their `exp`.
    token = make_token("alice", ttl_s=2)
    expires = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 200
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
        async with session.get(gateway.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 401
            error = (await resp.json())["error"]
    assert error["code"] == "invalid_token"
    assert error["message"] == "Token expired"


def test_openai_package_raises_authentication_error(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, make_token("alice", secret="wrong" * 8)).models.list()


async def test_token_in_cookie_and_x_api_key_not_in_the_query(
    gateway: GatewayProcess, alice_token: str
) -> None:
    async with aiohttp.ClientSession() as session:
        for kwargs in (
            {"headers": {"x-api-key": API_KEY}},
            {"headers": {"Cookie": f"token={alice_token}"}},
        ):
            async with session.get(gateway.url + "/v1/models", **kwargs) as resp:
                assert resp.status == 200, kwargs
        # A URL ends up in logs and history: query tokens are for socket handshakes only.
        async with session.get(gateway.url + "/v1/models", params={"token": alice_token}) as resp:
            assert resp.status == 401


def test_unknown_model_is_404_with_the_known_ones(
    gateway: GatewayProcess, alice_token: str
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway, alice_token).chat.completions.create(
            model="no-such-model", messages=MESSAGES
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"] and "fake-model" in error["message"]


TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": MESSAGES}, "'model'"),
        ({"model": "fake-model"}, "'messages'"),
        ({"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"model": "fake-model", "messages": MESSAGES, "stream": "yes"}, "'stream'"),
        ({"model": "fake-model", "messages": MESSAGES, "n": 3}, "n=1"),
        # Tool calling is relayed (tests/api/test_tool_calls.py) in the shape servers take.
        ({"model": "fake-model", "messages": MESSAGES, "tools": TOOL}, "'tools' must be"),
        (
            {"model": "fake-model", "messages": MESSAGES, "functions": [TOOL["function"]]},
            "deprecated form of tool calling",
        ),
    ],
)
async def test_bad_bodies_get_400(
    gateway: GatewayProcess, alice_token: str, body: Any, fragment: str
) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {alice_token}"}
        async with session.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


async def test_invalid_json_gets_400(gateway: GatewayProcess, alice_token: str) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"}
        async with session.post(
            gateway.url + "/v1/chat/completions", data=b"{nope", headers=headers
        ) as resp:
            assert resp.status == 400
            assert "not valid JSON" in (await resp.json())["error"]["message"]


def test_upstream_http_error_is_502(gateway: GatewayProcess, alice_token: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, alice_token).chat.completions.create(
            model="fake-error", messages=MESSAGES, stream=True
        )
    assert caught.value.status_code == 502
    # The model and the status; the server's own words go to the log only.
    assert "'fake-error' answered HTTP 500" in str(caught.value)
    assert "fake failure" not in str(caught.value)


def test_upstream_dying_mid_stream_gives_an_error_chunk(
    gateway: GatewayProcess, alice_token: str
) -> None:
    stream = client(gateway, alice_token).chat.completions.create(
        model="fake-dies", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "broke off" in str(caught.value)
    assert "".join(received) == reply_text("fake-dies", MESSAGES)[:9]


async def test_upstream_dying_mid_stream_wire(gateway: GatewayProcess, alice_token: str) -> None:
    body = {"model": "fake-dies", "messages": MESSAGES, "stream": True}
    _, payloads = await raw_stream(gateway.url + "/v1/chat/completions", body, alice_token)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "upstream_error" and error["type"] == "server_error"


async def test_client_disconnect_closes_the_upstream_request(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    marker = f"disconnect-{time.time_ns()}"
    body = {"model": "fake-slow", "messages": [{"role": "user", "content": marker}], "stream": True}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {alice_token}"},
        )
        seen = 0
        async for line in resp.content:
            seen += line.startswith(b"data: ")
            if seen == 5:
                break
        resp.close()  # drop the connection mid-reply
    (record,) = fake_upstream.requests_for(marker)
    assert record.ended.wait(5), "the upstream request was never closed"
    assert record.disconnected and not record.finished
    assert record.chunks_sent < 64


def test_upstream_down_is_502(start_gateway: Any, alice_token: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = start_gateway({"OPENAI_API_BASE_URL": dead, "GATEWAY_DEMO_MODEL": "false"})
    with pytest.raises(openai.APIStatusError) as caught:
        client(gw, alice_token).chat.completions.create(model="llama3", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "unreachable" in str(caught.value) and dead not in str(caught.value)


async def test_upstream_going_down_after_listing_is_502_and_not_ready(
    start_gateway: Any, alice_token: str
) -> None:
    fake = FakeUpstream().start()
    gw = start_gateway({"OPENAI_API_BASE_URL": fake.url})
    assert next(m.id for m in client(gw, alice_token).models.list()) == "fake-model"
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/ready") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        fake.stop()
        # Within the few seconds /ready keeps a result.
        checks: dict[str, str] = {}
        for _ in range(50):
            async with session.get(gw.url + "/ready") as resp:
                if resp.status == 503:
                    checks = (await resp.json())["checks"]
                    break
            await asyncio.sleep(0.1)
        assert checks.get("upstream 1") == "failed", checks
        # What a load balancer asks: this replica can serve (the upstream is everyone's).
        async with session.get(gw.url + "/ready?upstreams=0") as resp:
            assert resp.status == 200
            assert await resp.json() == {"ready": True, "checks": {"bus": "ok", "store": "ok"}}
    with pytest.raises(openai.APIStatusError) as caught:
        client(gw, alice_token).chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
    assert caught.value.status_code == 502 and "unreachable" in str(caught.value)


def test_a_model_is_retrieved_as_a_reply_would_find_it(
    start_gateway: Any, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    """With one of two model servers down, a model the other lists is there, and one
    it does not is "not available" (it may live on the server that is down): a 502,
    as a reply naming it gets, not a 404."""
    down = f"http://127.0.0.1:{free_port()}/v1"
    gw = start_gateway({"OPENAI_API_BASE_URLS": f"{fake_upstream.url};{down}"})
    sdk = client(gw, alice_token)
    assert sdk.models.retrieve("fake-model").id == "fake-model"
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.models.retrieve("on-the-server-that-is-down")
    assert refused.value.status_code == 502 and "not available" in str(refused.value)
    with pytest.raises(openai.APIStatusError) as same:
        sdk.chat.completions.create(model="on-the-server-that-is-down", messages=MESSAGES)
    assert same.value.status_code == 502


async def test_cors_allowlist(start_gateway: Any) -> None:
    gw = start_gateway({"CORS_ALLOW_ORIGIN": "https://good.example;http://localhost:5173"})
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    async with aiohttp.ClientSession() as session:
        url = gw.url + "/v1/chat/completions"
        async with session.options(
            url, headers={"Origin": "https://evil.example", **preflight}
        ) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with session.options(
            url, headers={"Origin": "https://good.example", **preflight}
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://good.example"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization"
        async with session.get(
            gw.url + "/health", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with session.get(
            gw.url + "/health", headers={"Origin": "http://localhost:5173"}
        ) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"


async def test_cors_wildcard_by_default(gateway: GatewayProcess) -> None:
    preflight = {"Origin": "https://any.example", "Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as session:
        async with session.options(gateway.url + "/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://any.example"


def test_demo_model_alone_on_embedded_defaults(start_gateway: Any, tmp_path: Any) -> None:
    gw = start_gateway({"WEBUI_SECRET_KEY": ""}, data_dir=tmp_path / "fresh")
    secret = (tmp_path / "fresh" / ".webui_secret_key").read_text()
    assert len(secret) >= 32
    assert (tmp_path / "fresh" / ".webui_secret_key").stat().st_mode & 0o077 == 0
    token = jwt.encode({"id": "alice"}, secret, algorithm="HS256")
    api = client(gw, token)
    assert [m.id for m in api.models.list()] == ["gateway-demo"]
    text, _ = collect(
        api.chat.completions.create(model="gateway-demo", messages=MESSAGES, stream=True)
    )
    assert text.startswith("This is the gateway's built-in demo model") and '"hello there"' in text
    again = client(gw, token).chat.completions.create(model="gateway-demo", messages=MESSAGES)
    assert again.choices[0].message.content == text  # deterministic


def test_cli_token_is_accepted_and_secret_is_kept(start_gateway: Any, tmp_path: Any) -> None:
    data = tmp_path / "kept"
    env = {"DATA_DIR": str(data), "WEBUI_SECRET_KEY": ""}
    first = start_gateway(env, data_dir=data)
    first.stop()
    second = start_gateway(env, data_dir=data)
    cli_env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data)}
    token = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--user", "bob", "--ttl", "60"],
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    claims = jwt.decode(token, (data / ".webui_secret_key").read_text(), algorithms=["HS256"])
    assert claims["id"] == "bob" and claims["exp"] - time.time() <= 60
    assert [m.id for m in client(second, token).models.list()] == ["gateway-demo"]


def test_check_config_names_the_bad_setting() -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "eighty", "WEBUI_SECRET_KEY": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "GATEWAY_PORT" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        env={**env, "GATEWAY_PORT": "9000"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "port: 9000" in good.stdout and SECRET not in good.stdout


@pytest.mark.parametrize("model", ["fake-model", "fake-linger"])
def test_replies_reuse_the_connection_to_the_model_server(
    gateway: GatewayProcess, alice_token: str, fake_upstream: FakeUpstream, model: str
) -> None:
    """A finished stream gives its connection back to the pool: no new TCP (and, to a
    remote server, TLS) handshake in front of every reply's first token; also when the
    server ends its body a moment after [DONE]."""
    marker = f"reuse {time.time_ns()}"
    messages = [{"role": "user", "content": marker}]
    for _ in range(5):
        stream = client(gateway, alice_token).chat.completions.create(
            model=model, messages=messages, stream=True
        )
        assert collect(stream)[0] == reply_text(model, messages)
        time.sleep(0.5)  # the connection is handed back once the upstream's body ended
    peers = {record.peer for record in fake_upstream.requests_for(marker)}
    assert len(fake_upstream.requests_for(marker)) == 5
    assert len(peers) == 1, peers


def test_each_model_server_gets_the_key_in_its_place(start_gateway: Any, alice_token: str) -> None:
    """`OPENAI_API_KEYS=";sk-b"`: no key for the first server, sk-b for the second
    (an empty place was dropped, and the second server's key went to the first)."""
    first, second = FakeUpstream().start(), FakeUpstream().start()
    try:
        gw = start_gateway(
            {
                "OPENAI_API_BASE_URLS": f"{first.url};{second.url}",
                "OPENAI_API_KEYS": ";sk-the-second-servers-key",
            }
        )
        client(gw, alice_token).chat.completions.create(model="fake-model", messages=MESSAGES)
        (asked,) = first.requests  # the first server that lists the model answers
        assert "Authorization" not in asked.headers, asked.headers
        gw.stop()
        gw = start_gateway(
            {
                "OPENAI_API_BASE_URLS": f"{second.url};{first.url}",
                "OPENAI_API_KEYS": "sk-the-second-servers-key;",
            }
        )
        client(gw, alice_token).chat.completions.create(model="fake-model", messages=MESSAGES)
        (asked,) = second.requests
        assert asked.headers.get("Authorization") == "Bearer sk-the-second-servers-key"
    finally:
        first.stop()
        second.stop()
