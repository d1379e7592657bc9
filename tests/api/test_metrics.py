"""Prometheus metrics at `/metrics` (gateway/edge/metrics.py) against a fresh gateway
process: after a scripted mix of traffic on every flavour, each counter equals what
the test did.

The script, on a gateway whose counters start at zero:

    OpenAI          STREAMS SSE streams (the `openai` SDK, fake-model), PLAIN
                    non-stream answers, one fake-error (HTTP 500 upstream: a
                    failed reply, 502 to the client)
    Nadoo           NADOO_CHATS WebSocket connections, one fake-model chat each
    RAGFlow         a key and an assistant (fake-slow), one chat over its WebSocket,
                    one SSE completion
    Open WebUI      a python-socketio connection and a web-app turn (fake-slow)
    refusals        one HTTP request per reason of edge/auth.py a lone request can
                    give (all but revoked and removed), one Nadoo socket with an
                    unknown API key, one Socket.IO connection with an expired JWT
                    (Socket.IO accepts the connection and leaves it anonymous, as
                    Open WebUI does: counted as a connection *and* a refusal)

Parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from email.message import Message
from typing import Any

import aiohttp
import jwt
import openai
import pytest
import websockets
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_resume_transports import (
    RAGFLOW_END,
    account,
    nadoo_connect,
    ragflow_account,
    ragflow_question,
    ragflow_url,
    recv_json,
    webapp_turn,
)
from tests.clients import PySocket, post_json
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import SECRET, GatewayProcess, make_token

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
STREAMS = 3
PLAIN = 2
NADOO_CHATS = 2
TIMEOUT_S = 20

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


# -- reading /metrics ---------------------------------------------------------------------
def parse(text: str) -> Samples:
    """Every sample: name → {sorted label pairs: value}."""
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by(samples: Samples, name: str, *labels: str) -> dict[Any, float]:
    """The series of `name` keyed by the values of `labels` (one label: its value)."""
    out: dict[Any, float] = {}
    for key, value in samples.get(name, {}).items():
        found = dict(key)
        values = tuple(found[label] for label in labels)
        out[values[0] if len(values) == 1 else values] = value
    return out


async def get_metrics(gw: GatewayProcess, auth: str | None) -> tuple[int, str, str]:
    headers = {"Authorization": auth} if auth is not None else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{gw.url}/metrics", headers=headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def scrape(gw: GatewayProcess) -> Samples:
    status, _, text = await get_metrics(gw, f"Bearer {METRICS_TOKEN}")
    assert status == 200, text
    return parse(text)


async def settled(gw: GatewayProcess, done: Any, timeout_s: float = 10) -> Samples:
    """Scrape until `done(samples)` (closes and access-log lines are asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(gw)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


# -- the script ------------------------------------------------------------------------------
QUESTION = "count me"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
ANSWER = reply_text("fake-model", [{"role": "user", "content": QUESTION}])


async def openai_traffic(gw: GatewayProcess, token: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=token, max_retries=0, timeout=TIMEOUT_S
    ) as client:

        async def stream() -> str:
            chunks = await client.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

        async def plain() -> str:
            done = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
            return done.choices[0].message.content or ""

        texts = await asyncio.gather(*[stream() for _ in range(STREAMS)])
        texts += await asyncio.gather(*[plain() for _ in range(PLAIN)])
        assert texts == [ANSWER] * (STREAMS + PLAIN)
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="fake-error", messages=MESSAGES)
        assert failed.value.status_code == 502


async def nadoo_traffic(gw: GatewayProcess) -> None:
    async def one() -> None:
        user = account()
        async with await nadoo_connect(gw, user.token) as ws:
            body = {"type": "chat", "content": QUESTION, "application_id": "fake-model"}
            await ws.send(json.dumps(body))
            while (frame := await recv_json(ws))["type"] != "response_end":
                pass
        assert frame["full_response"] == ANSWER

    await asyncio.gather(*[one() for _ in range(NADOO_CHATS)])


async def ragflow_traffic(gw: GatewayProcess) -> None:
    """One chat over RAGFlow's WebSocket, one SSE completion (the assistant: fake-slow)."""
    user = await ragflow_account(gw)
    async with websockets.connect(ragflow_url(gw, user.ragflow_key)) as ws:
        await ws.send(ragflow_question(user))
        while (frame := await recv_json(ws)) != RAGFLOW_END:
            assert frame["code"] == 0, frame

    made = await post_json(
        f"{gw.url}/ragflow/api/v1/chats/{user.assistant_id}/sessions",
        user.ragflow_key,
        {"name": "metrics"},
    )
    session_id = made["data"]["id"]
    body = {"question": "go", "stream": True, "session_id": session_id}
    headers = {"Authorization": f"Bearer {user.ragflow_key}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        url = f"{gw.url}/ragflow/api/v1/chats/{user.assistant_id}/completions"
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            text = await resp.text()
    payloads = [json.loads(b[len("data:") :]) for b in text.split("\n\n") if b.startswith("data:")]
    assert payloads[-1] == RAGFLOW_END and len(payloads) > 2, payloads[-3:]


async def openwebui_traffic(gw: GatewayProcess) -> None:
    user = account()
    sock = await PySocket().connect(gw.url, user.token)
    try:
        _, message_id = await webapp_turn(gw, user, sock)
        await sock.wait_ended(timeout_s=TIMEOUT_S)
    finally:
        await sock.close()
    assert any(e["message_id"] == message_id for e in sock.events)


def bad_tokens() -> dict[str, dict[str, str]]:
    """An `Authorization`-style header per refusal reason (edge/auth.py), over HTTP."""
    expired = make_token("late", ttl_s=-60)
    unsigned = jwt.encode({"id": "mallory"}, "", algorithm="none")
    forged = make_token("mallory", secret="not-the-gateways-secret-" + "x" * 16)
    nobody = jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return {
        "expired": {"Authorization": f"Bearer {expired}"},
        "algorithm": {"Authorization": f"Bearer {unsigned}"},
        # Spaces in an Authorization header would make it malformed; x-api-key takes it whole.
        "not_jwt": {"x-api-key": "not a jwt"},
        "invalid_api_key": {"Authorization": f"Bearer sk-{uuid.uuid4().hex}"},
        "missing": {},
        "malformed": {"Authorization": "Bearer two words"},
        "signature": {"Authorization": f"Bearer {forged}"},
        "no_subject": {"Authorization": f"Bearer {nobody}"},
    }


async def refused_traffic(gw: GatewayProcess) -> None:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for reason, headers in bad_tokens().items():
            async with http.get(f"{gw.url}/v1/models", headers=headers) as resp:
                assert resp.status == 401, (reason, resp.status, await resp.text())
    # Nadoo: accepted, then closed 1008 before it counts as a connection.
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/refused?token=sk-{uuid.uuid4().hex}"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Socket.IO: connected (as Open WebUI: the token may come later by user-join).
    anonymous = await PySocket().connect(gw.url, make_token("late", ttl_s=-60))
    await anonymous.close()


# Refusals by reason: the HTTP ones, the Nadoo socket's API key, the Socket.IO JWT.
EXPECTED_AUTH_FAILURES = {
    "expired": 2,
    "algorithm": 1,
    "not_jwt": 1,
    "invalid_api_key": 2,
    "missing": 1,
    "malformed": 1,
    "signature": 1,
    "no_subject": 1,
}
HTTP_REFUSALS = 8
EXPECTED_OPENED = {
    ("sse", "openai"): STREAMS,
    ("websocket", "nadoo"): NADOO_CHATS,
    ("websocket", "ragflow"): 1,
    ("sse", "ragflow"): 1,
    # The web app's socket, and the one with the expired token.
    ("socketio", "openwebui"): 2,
}
# fake-model: the OpenAI streams and answers, and the Nadoo chats; fake-slow: the
# RAGFlow assistant's two replies and the web-app turn.
FINISHED_BY_MODEL = {"fake-model": STREAMS + PLAIN + NADOO_CHATS, "fake-slow": 3}


def all_closed(samples: Samples) -> bool:
    return (
        set(by(samples, "gateway_connections", "transport", "flavour").values()) <= {0.0}
        and by(samples, "gateway_replies_running") == {(): 0.0}
        and by(samples, "gateway_rooms") == {(): 0.0}
        # The access line (and the status counter) of a WebSocket comes as it closes.
        and by(samples, "gateway_http_requests_total", "status").get("101") == 6
    )


async def test_counters_equal_the_scripted_traffic(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_METRICS_TOKEN": METRICS_TOKEN}
    )
    before = await scrape(gw)
    assert by(before, "gateway_connections_opened_total", "transport", "flavour") == {}
    assert by(before, "gateway_replies_total", "status") == {}
    assert by(before, "gateway_auth_failures_total", "reason") == {}

    token = make_token(f"metrics-{uuid.uuid4().hex[:8]}")
    await asyncio.wait_for(
        asyncio.gather(
            openai_traffic(gw, token),
            nadoo_traffic(gw),
            ragflow_traffic(gw),
            openwebui_traffic(gw),
            refused_traffic(gw),
        ),
        60,
    )
    # /metrics itself refuses without its token (not an auth failure: its own token).
    for auth in (None, "Bearer wrong", f"Basic {METRICS_TOKEN}"):
        status, _, text = await get_metrics(gw, auth)
        assert status == 401 and METRICS_TOKEN not in text and "gateway_" not in text

    after = await settled(gw, all_closed)
    gauges = by(after, "gateway_connections", "transport", "flavour")
    assert set(gauges.values()) == {0.0}, gauges
    assert by(after, "gateway_replies_running") == {(): 0.0}
    assert by(after, "gateway_rooms") == {(): 0.0}

    opened = by(after, "gateway_connections_opened_total", "transport", "flavour")
    assert opened == EXPECTED_OPENED
    assert by(after, "gateway_replies_total", "status") == {
        "finished": sum(FINISHED_BY_MODEL.values()),
        "failed": 1,
    }
    assert by(after, "gateway_reply_failures_total", "code") == {"upstream_error": 1}
    assert by(after, "gateway_upstream_errors_total", "kind") == {"http_error": 1}
    assert by(after, "gateway_auth_failures_total", "reason") == EXPECTED_AUTH_FAILURES
    # Every finished reply had a first token and a duration; the refused one (no model
    # answered) has neither.
    ttft = by(after, "gateway_time_to_first_token_seconds_count", "model")
    assert ttft == FINISHED_BY_MODEL
    assert by(after, "gateway_reply_duration_seconds_count", "model") == FINISHED_BY_MODEL
    for model, count in FINISHED_BY_MODEL.items():
        buckets = by(after, "gateway_time_to_first_token_seconds_bucket", "model", "le")
        assert buckets[(model, "+Inf")] == count
        assert by(after, "gateway_time_to_first_token_seconds_sum", "model")[model] > 0

    delivered = by(after, "gateway_events_delivered_total", "transport")
    assert set(delivered) == {"socketio", "websocket", "sse"}
    assert all(delivered[t] > 0 for t in delivered), delivered

    http = by(after, "gateway_http_requests_total", "status")
    # The refusals over HTTP, and the three /metrics scrapes without the right token.
    assert http["401"] == HTTP_REFUSALS + 3, http
    assert http["502"] == 1, http  # the fake-error reply
    # Nadoo ×2 and its refused socket, RAGFlow's socket, Socket.IO ×2.
    assert http["101"] == 6, http
    assert set(http) <= {"200", "101", "401", "502"}, http

    # Nothing else moved: no slow clients, no bus (one replica), nothing cancelled.
    for name in (
        "gateway_outbox_merges_total",
        "gateway_slow_client_disconnects_total",
        "gateway_bus_published_total",
        "gateway_bus_received_total",
        "gateway_bus_malformed_total",
        "gateway_bus_dropped_total",
        "gateway_bus_waits_total",
    ):
        assert by(after, name) == {(): 0.0}, name


async def test_metrics_needs_its_token_and_is_prometheus_text(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway({"GATEWAY_METRICS_TOKEN": METRICS_TOKEN})
    for auth in (None, "", "Bearer", "Bearer wrong", METRICS_TOKEN, f"Token {METRICS_TOKEN}"):
        status, _, text = await get_metrics(gw, auth)
        assert status == 401, auth
        assert "GATEWAY_METRICS_TOKEN" in text and "# TYPE" not in text
    status, _, text = await get_metrics(gw, f"bearer  {METRICS_TOKEN} ")
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"gateway_connections", "gateway_replies", "gateway_auth_failures"} <= families


async def test_metrics_content_type_is_a_prometheus_text_format(start_gateway: Any) -> None:
    """`text/plain` in UTF-8, in a version of Prometheus's text exposition format.

    The version is prometheus-client's `CONTENT_TYPE_LATEST`: `0.0.4` up to 0.21,
    `1.0.0` from 0.22 on (uv.lock has 0.26: `1.0.0`, Prometheus 3's
    "PrometheusText1.0.0", the same bytes for these metric names).  Prometheus 2
    parses any `text/plain` with its text parser; Prometheus 3 knows both."""
    gw: GatewayProcess = start_gateway({"GATEWAY_METRICS_TOKEN": METRICS_TOKEN})
    status, content_type, text = await get_metrics(gw, f"Bearer {METRICS_TOKEN}")
    assert status == 200
    parsed = Message()
    parsed["Content-Type"] = content_type
    assert parsed.get_content_type() == "text/plain", content_type
    assert parsed.get_param("charset") == "utf-8", content_type
    assert parsed.get_param("version") in ("0.0.4", "1.0.0"), content_type
    # The classic format either way: HELP and TYPE lines, `_total` counters.
    assert "# TYPE gateway_replies_total counter" in text
    assert "# HELP gateway_connections " in text


async def test_metrics_off_removes_the_route(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway(
        {"GATEWAY_METRICS": "false", "GATEWAY_METRICS_TOKEN": METRICS_TOKEN}
    )
    for auth in (None, f"Bearer {METRICS_TOKEN}"):
        status, _, text = await get_metrics(gw, auth)
        assert status == 404, (auth, status)
        assert "gateway_" not in text
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{gw.url}/health") as resp:
            assert resp.status == 200
