"""`gateway doctor` against real gateway processes, as a user runs it (a subprocess)
and in-process (`gateway.doctor.run`), and the paced SSE probe it relies on.

Broken proxies (no Upgrade, buffering, no stickiness) are the proxy tests' part
(tests/proxy/); here the gateway is reached directly, and the faults the
doctor can meet without a proxy: nothing listening, a wrong sub-path, a
refused origin, a refused token.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import doctor
from gateway.api import openai as openai_routes
from gateway.doctor import http as doctor_http
from gateway.doctor.report import Check, Report
from tests.clients import get_json
from tests.fakes.upstream import MODELS, FakeUpstream, free_port
from tests.gatewayproc import GatewayProcess, make_token

Start = Callable[..., GatewayProcess]
TOKEN_CHECKS = ["sse-chunking", "chat:openai", "chat:openwebui", "chat:nadoo", "chat:ragflow"]
ALWAYS_OK = ["health", "websocket-upgrade", "socketio-websocket", "socketio-polling"]


def run_cli(*args: str, timeout_s: float = 90) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """`python -m gateway doctor …`: exit code, stdout, and {check: (status, detail)}."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    checks = {}
    for line in done.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("OK", "FAIL", "SKIP"):
            name, _, detail = rest.strip().partition(" ")
            checks[name] = (status, detail.strip())
    return done.returncode, done.stdout, checks


def statuses(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: status for name, (status, _) in checks.items()}


def new_user() -> tuple[str, str]:
    user_id = f"doctor-test-{uuid.uuid4().hex[:8]}"
    return user_id, make_token(user_id, name="Doctor Test")


# -- the command, against a gateway reached directly ----------------------------------
def test_every_check_passes_with_a_token(
    gateway: GatewayProcess,
) -> None:
    _, token = new_user()
    code, out, checks = run_cli(gateway.url, "--token", token, "--origin", "http://page.example")
    assert code == 0, out
    assert statuses(checks) == {
        **{name: "OK" for name in [*ALWAYS_OK, "token", "cors", *TOKEN_CHECKS]},
        "idle-stream": "SKIP",
    }, out
    assert list(checks) == [name for name, _, _ in doctor.PLAN]  # in the documented order
    # The fake upstream's models, then the demo model.
    listed = len(MODELS) + 1
    assert checks["token"][1] == f"accepted; {listed} models listed, the chats use fake-model"
    assert checks["websocket-upgrade"][1] == (
        "101 on /ws/socket.io, /ws/chat/…, /v1/ws/health, /v1/ws/chat, "
        "/api/v1/ws/chats/…/completions"
    )
    assert checks["socketio-polling"][1].startswith("10 of 10 polling sessions connected")
    assert "one upgraded to websocket" in checks["socketio-polling"][1]
    assert checks["sse-chunking"][1].startswith("4 chunks over ")
    assert out.splitlines()[-1] == "0 faults (11 OK, 1 skipped)"
    assert "\033[" not in out  # no colors when stdout is not a terminal


async def test_what_the_chats_create_is_deleted(gateway: GatewayProcess) -> None:
    _, token = new_user()
    report = await doctor.run(gateway.url, token=token, polls=1)
    assert report.faults == 0, report.render()
    assert await get_json(f"{gateway.url}/api/v1/chats/", token) == []
    assistants = await get_json(f"{gateway.url}/ragflow/api/v1/chats", token)
    assert assistants == {"code": 0, "message": "", "data": []}


def test_without_a_token_the_checks_that_need_one_are_skipped(gateway: GatewayProcess) -> None:
    code, out, checks = run_cli(gateway.url, "--polls", "3")
    assert code == 0, out
    assert statuses(checks) == {
        **{name: "OK" for name in ALWAYS_OK},
        **{name: "SKIP" for name in ["token", "cors", "idle-stream", *TOKEN_CHECKS]},
    }, out
    assert checks["token"][1] == "no --token: the checks that need one are skipped"
    assert checks["sse-chunking"][1] == "needs --token"
    assert "without a token" in checks["socketio-websocket"][1]
    assert out.splitlines()[-1] == "0 faults (4 OK, 8 skipped)"


def test_nothing_listening_is_one_fault_and_the_rest_is_skipped() -> None:
    port = free_port()
    code, out, checks = run_cli(f"http://127.0.0.1:{port}", "--token", "x", "--timeout", "5")
    assert code == 1, out
    assert checks["health"] == ("FAIL", f"cannot connect to 127.0.0.1:{port} (connection refused)")
    assert "      fix: is the gateway (or the proxy in front of it) running" in out
    assert {s for name, s in statuses(checks).items() if name != "health"} == {"SKIP"}
    assert checks["chat:nadoo"][1] == "health failed (see health)"
    assert out.splitlines()[-1] == "1 fault (0 OK, 11 skipped)"


def test_a_url_that_is_not_http_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "ftp://chat.example.com"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == "gateway doctor: 'ftp://chat.example.com' is not an http:// or https:// URL\n"
    )


def test_idle_stream_held_open_with_slow(gateway: GatewayProcess) -> None:
    _, token = new_user()
    code, out, checks = run_cli(
        gateway.url, "--token", token, "--slow", "--idle-seconds", "2", "--polls", "1"
    )
    assert code == 0, out
    assert checks["idle-stream"] == ("OK", "/ws/chat/… still open after 2 s idle, and answered")


def test_idle_stream_without_a_token_uses_the_ragflow_health_socket(
    gateway: GatewayProcess,
) -> None:
    code, out, checks = run_cli(gateway.url, "--slow", "--idle-seconds", "2", "--polls", "1")
    assert code == 0, out
    assert checks["idle-stream"] == ("OK", "/v1/ws/health still open after 2 s idle, and answered")


async def test_the_idle_check_says_how_it_is_going_every_five_seconds(
    gateway: GatewayProcess,
) -> None:
    told: list[str] = []
    report = await doctor.run(
        gateway.url, slow=True, idle_seconds=11, polls=1, on_progress=told.append
    )
    assert [c.status for c in report.checks if c.name == "idle-stream"] == ["OK"]
    assert told[:3] == [
        "idle-stream: 0/11 s idle",
        "idle-stream: 5/11 s idle",
        "idle-stream: 10/11 s idle",
    ], told


# -- faults the doctor can meet without a proxy ---------------------------------------
async def test_a_sub_path_the_gateway_does_not_know_names_gateway_base_path(
    gateway: GatewayProcess,
) -> None:
    report = await doctor.run(f"{gateway.url}/chat", timeout=5)
    health = report.get("health")
    assert health.status == "FAIL"
    assert health.detail == "GET /chat/health: 404: the gateway says it is reached under /chat"
    assert health.fix[0] == (
        "gateway: GATEWAY_BASE_PATH=/chat when requests reach it with /chat still in the path"
    )
    assert "set $gateway_prefix /chat;" in health.fix[1]
    assert report.faults == 1


async def test_a_gateway_under_a_base_path_passes_at_that_path(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    proc = GatewayProcess(
        tmp_path, {"GATEWAY_BASE_PATH": "/chat", "OPENAI_API_BASE_URL": fake_upstream.url}
    )
    proc.start()
    try:
        _, token = new_user()
        report = await doctor.run(f"{proc.url}/", token=token, polls=2)
        assert report.faults == 0, report.render()
        assert report.get("socketio-websocket").detail.startswith(
            "connected over websocket at /chat/ws/socket.io"
        )
        assert report.get("websocket-upgrade").detail.startswith("101 on /chat/ws/socket.io, ")
        # Without the sub-path: the gateway's 404 says where it lives.
        root = f"http://127.0.0.1:{proc.port}"
        bare = (await doctor.run(root, timeout=5)).get("health")
        assert bare.status == "FAIL"
        assert bare.detail == (
            "GET /health: 404: the gateway says it lives under /chat (GATEWAY_BASE_PATH)"
        )
        assert bare.fix[0] == f"clients (and the doctor) use {root}/chat: put /chat in URL"
    finally:
        proc.stop()


async def test_a_refused_origin_names_cors_allow_origin(start_gateway: Start) -> None:
    proc = start_gateway({"CORS_ALLOW_ORIGIN": "https://app.example.com"})
    allowed = await doctor.run(proc.url, origin="https://app.example.com", polls=1)
    assert allowed.get("cors") == Check(
        "cors", "OK", "https://app.example.com allowed: preflight and Socket.IO handshake"
    )
    refused = await doctor.run(proc.url, origin="https://evil.example", polls=1)
    cors = refused.get("cors")
    assert cors.status == "FAIL"
    assert cors.detail == (
        "https://evil.example refused: preflight of /api/chat/completions: 403, "
        "Access-Control-Allow-Origin missing; Socket.IO handshake: 403 (Origin https://evil.example "
        "is not allowed)"
    )
    assert cors.fix[0].startswith("add https://evil.example to CORS_ALLOW_ORIGIN")
    assert refused.faults == 1


async def test_socketio_over_polling_only_is_a_setting_not_a_fault(
    start_gateway: Start, fake_upstream: FakeUpstream
) -> None:
    proc = start_gateway(
        {"ENABLE_WEBSOCKET_SUPPORT": "false", "OPENAI_API_BASE_URL": fake_upstream.url}
    )
    _, token = new_user()
    report = await doctor.run(proc.url, token=token, polls=2)
    assert report.faults == 0, report.render()
    assert report.get("websocket-upgrade").detail.endswith(
        "; /ws/socket.io: polling only (ENABLE_WEBSOCKET_SUPPORT=false)"
    )
    assert report.get("socketio-websocket").status == "SKIP"
    assert report.get("socketio-polling").detail == (
        "2 of 2 polling sessions connected (with the token), no upgrade offered (polling only)"
    )
    assert report.get("chat:openwebui").detail.startswith("fake-model over polling: ")


async def test_a_refused_token_is_one_fault_not_one_per_chat(gateway: GatewayProcess) -> None:
    report = await doctor.run(gateway.url, token=make_token("mallory", secret="x" * 40), polls=1)
    token = report.get("token")
    assert token.status == "FAIL" and token.detail.startswith("the gateway refused the token: ")
    assert "WEBUI_SECRET_KEY" in token.fix[0]
    for name in TOKEN_CHECKS:
        assert report.get(name) == Check(name, "SKIP", "the token was not accepted (see token)")
    assert report.faults == 1


async def test_an_unknown_model_is_named(gateway: GatewayProcess) -> None:
    _, token = new_user()
    report = await doctor.run(gateway.url, token=token, model="no-such-model", polls=1)
    assert report.get("token").detail.startswith(
        "--model no-such-model is not among the gateway's models (fake-model, "
    )


# -- the paced probe (gateway/api/openai.py) --------------------------------------------
async def paced(
    url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, list[tuple[float, str]]]:
    """The response and its SSE payloads, each with its arrival time from the request."""
    async with aiohttp.ClientSession() as session:
        sent = time.monotonic()
        resp = await session.post(url, json=body, headers=headers)
        arrivals = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append((time.monotonic() - sent, line[6:].decode().strip()))
        resp.release()
    return resp, arrivals


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat/completions"])
async def test_the_paced_probe_spreads_four_chunks_without_a_model(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, route: str
) -> None:
    _, token = new_user()
    marker = f"paced-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {token}", "X-Gateway-Probe": "pace"}
    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": marker}],
    }
    resp, arrivals = await paced(gateway.url + route, headers, body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert arrivals[-1][1] == "[DONE]"
    chunks = [(t, json.loads(p)) for t, p in arrivals[:-1]]
    assert {c["object"] for _, c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for _, c in chunks} == {"fake-model"}
    assert len({c["id"] for _, c in chunks}) == 1 and chunks[0][1]["id"].startswith("chatcmpl-")
    contents = [(t, c["choices"][0]["delta"].get("content")) for t, c in chunks]
    texts = [(t, text) for t, text in contents if text]
    assert [text for _, text in texts] == ["probe 1 ", "probe 2 ", "probe 3 ", "probe 4 "]
    # 0.4 s apart, not in one burst (with room for a busy machine's delays).
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(texts)]
    assert all(gap >= 0.2 for gap in gaps) and sum(gaps) >= 0.8, gaps
    assert chunks[-1][1]["choices"][0]["finish_reason"] == "stop"
    assert fake_upstream.requests_for(marker) == []  # no model was asked


async def test_the_paced_probe_needs_authentication_and_a_stream(
    gateway: GatewayProcess,
) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"X-Gateway-Probe": "pace"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_token"
        # Not streaming: an ordinary completion from the model.
        _, token = new_user()
        headers = {"Authorization": f"Bearer {token}", "X-Gateway-Probe": "pace"}
        async with session.post(url, json={**body, "stream": False}, headers=headers) as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "Fake reply to: x"


def test_the_doctor_and_the_gateway_agree_on_the_probe() -> None:
    assert doctor_http.PROBE_HEADER == openai_routes.PROBE_HEADER
    assert doctor_http.PROBE_CHUNKS == openai_routes.PROBE_CHUNKS
    assert doctor_http.PROBE_GAP_S == openai_routes.PROBE_GAP_S
    assert doctor_http.PROBE_MODEL == openai_routes.PROBE_MODEL


# -- the report's text -------------------------------------------------------------------
def test_a_report_renders_one_line_per_check_fixes_indented_and_a_count() -> None:
    report = Report(
        "http://x",
        [
            Check("health", "OK", "/health 200"),
            Check("websocket-upgrade", "FAIL", "426 on /ws/chat/…", ("line one", "line two")),
            Check("idle-stream", "SKIP", "needs --slow"),
        ],
    )
    assert report.render() == (
        "OK    health             /health 200\n"
        "FAIL  websocket-upgrade  426 on /ws/chat/…\n"
        "      fix: line one\n"
        "      fix: line two\n"
        "SKIP  idle-stream        needs --slow\n"
        "1 fault (1 OK, 1 skipped)\n"
    )
    assert report.faults == 1
    assert "\033[31mFAIL" in report.render(color=True)
