"""The access log and request ids (gateway/edge/access.py, gateway/cli/logs.py) as an
operator reads them: the log file of a real gateway process.

* GATEWAY_LOG_FORMAT=json: every line one JSON object (`ts`, `level`, `logger`,
  `msg`, the extra fields).
* A request's `X-Request-ID` from a trusted proxy (loopback is one by default,
  GATEWAY_TRUSTED_PROXIES) comes back in the response header, and is in its access
  line, in the lines of the connection and the reply it started, and in the request
  the model server gets.  An invalid one, one from a peer not trusted, or none: a
  fresh 32-hex id instead.
* Access lines: "METHOD PATH STATUS" with request_id, user_id, duration_ms, bytes,
  remote; the path without its query (a socket's token may be there).  No token,
  no message text and no reply text anywhere in the log.
* GATEWAY_ACCESS_LOG=false: no `gateway.access` line, the metrics still count.
* GATEWAY_LOG_FORMAT=text: plain lines, extras as key="value".
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_resume_transports import (
    RAGFLOW_END,
    ragflow_account,
    ragflow_question,
    ragflow_url,
    recv_json,
)
from tests.clients import PySocket, turn_body
from tests.fakes.upstream import FakeUpstream, Recorded, reply_text
from tests.gatewayproc import GatewayProcess, make_token

API_KEY = "sk-" + "b" * 32
HEX_ID = re.compile(r"[0-9a-f]{32}\Z")
TIMEOUT_S = 20
LOG_WAIT_S = 10
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
Line = dict[str, Any]


@pytest.fixture(scope="module")
def json_gw(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway logging JSON, with the default GATEWAY_TRUSTED_PROXIES (loopback)."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("json-log"),
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_API_KEYS": f"{API_KEY}=keyuser",
        },
    ).start()
    yield proc
    proc.stop()


# -- reading the log ------------------------------------------------------------------
def json_lines(gw: GatewayProcess) -> list[Line]:
    """Every complete line of the log file, each asserted to be one JSON object with
    ts (ISO 8601, UTC), level, logger and msg."""
    text = gw.log()
    lines = text.split("\n")
    lines.pop()  # "" after the last newline, or a line still being written
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), (number, line)
        assert {"ts", "level", "logger", "msg"} <= record.keys(), (number, line)
        ts = datetime.fromisoformat(record["ts"])
        assert ts.utcoffset() == timedelta(0), line
        assert record["level"] in LEVELS, line
        assert isinstance(record["logger"], str) and isinstance(record["msg"], str), line
        parsed.append(record)
    return parsed


def access_lines(lines: list[Line]) -> list[Line]:
    return [r for r in lines if r["logger"] == "gateway.access"]


async def wait_lines(
    gw: GatewayProcess, wanted: Callable[[Line], bool], count: int = 1
) -> list[Line]:
    """The access lines matching `wanted`, once there are `count` of them (the lines
    of a connection's close and of a reply's end come asynchronously)."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        found = [r for r in access_lines(json_lines(gw)) if wanted(r)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, f"{count} access line(s) wanted, found: {found}"
            return found
        await asyncio.sleep(0.05)


def of_id(request_id: str) -> Callable[[Line], bool]:
    return lambda r: r.get("request_id") == request_id


def said(request_id: str, msg: str) -> Callable[[Line], bool]:
    """The line of `request_id` whose message is `msg`."""
    return lambda r: r.get("request_id") == request_id and r["msg"] == msg


def upstream_request(fake: FakeUpstream, canary: str) -> Recorded:
    (found,) = fake.requests_for(canary)
    return found


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))


def user() -> tuple[str, str]:
    user_id = f"log-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


async def openai_stream(
    gw: GatewayProcess, token: str, text: str, headers: dict[str, str], model: str = "fake-model"
) -> tuple[aiohttp.ClientResponse, bytes]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    async with session() as http:
        resp = await http.post(
            f"{gw.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}", **headers},
        )
        data = await resp.read()
    return resp, data


async def nadoo_chat(
    gw: GatewayProcess, token: str, text: str, headers: dict[str, str], model: str = "fake-model"
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A chat over Nadoo's socket, the token in the query: (the id the handshake's
    response carried, the first frame of the reply — response_start, or the error —,
    the frames after it up to response_end)."""
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/{session_id}?seq=1&token={token}"
    async with websockets.connect(url, additional_headers=headers) as ws:
        assert ws.response is not None
        given = ws.response.headers["X-Request-ID"]
        assert (await recv_json(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": text, "application_id": model}))
        frames = [await recv_json(ws)]
        while frames[-1]["type"] not in ("response_end", "error"):
            frames.append(await recv_json(ws))
    return given, frames[0], frames[1:]


# -- the tests --------------------------------------------------------------------------
async def test_a_trusted_request_id_follows_its_request_everywhere(
    json_gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """Loopback is a trusted proxy by default: its X-Request-ID is the request's id
    in the response, the access line, the connection's lines, the reply's line and
    the upstream request, on an OpenAI SSE stream, a Nadoo socket and a web-app turn
    (its Socket.IO handshake and its POST each with their own id)."""
    user_id, token = user()
    canary = {k: f"canary-{k}-{uuid.uuid4().hex}" for k in ("sse", "nadoo", "turn")}
    ids = {k: rid(k) for k in ("sse", "nadoo", "socket", "turn")}

    async def sse() -> None:
        resp, _ = await openai_stream(json_gw, token, canary["sse"], {"X-Request-ID": ids["sse"]})
        assert resp.status == 200 and resp.headers["X-Request-ID"] == ids["sse"]

    async def nadoo() -> dict[str, Any]:
        given, start, frames = await nadoo_chat(
            json_gw, token, canary["nadoo"], {"X-Request-ID": ids["nadoo"]}
        )
        assert given == ids["nadoo"] and frames[-1]["type"] == "response_end"
        return start

    async def turn() -> str:
        sock = await PySocket().connect(json_gw.url, token, headers={"X-Request-ID": ids["socket"]})
        try:
            body = turn_body(sock.sid, canary["turn"], "fake-model")
            async with session() as http:
                async with http.post(
                    f"{json_gw.url}/api/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "X-Request-ID": ids["turn"]},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["X-Request-ID"] == ids["turn"]
            await sock.wait_ended(timeout_s=TIMEOUT_S)
        finally:
            await sock.close()
        message_id: str = body["id"]
        return message_id

    _, start, message_id = await asyncio.gather(sse(), nadoo(), turn())

    async def reply_line(request_id: str) -> Line:
        (line,) = await wait_lines(
            json_gw, lambda r: of_id(request_id)(r) and r["msg"].startswith("reply ")
        )
        return line

    # The OpenAI stream: its access line, its SSE connection, its reply.
    sse_id = ids["sse"]
    (access,) = await wait_lines(json_gw, lambda r: of_id(sse_id)(r) and " /v1/" in r["msg"])
    assert access["msg"] == "POST /v1/chat/completions 200" and access["user_id"] == user_id
    for what in ("connection opened", "connection closed"):
        (line,) = await wait_lines(json_gw, said(sse_id, what))
        assert (line["transport"], line["flavour"]) == ("sse", "openai")
    sse_reply = await reply_line(sse_id)
    assert sse_reply["msg"] == "reply finished" and sse_reply["model"] == "fake-model"
    assert sse_reply["chars"] == len(
        reply_text("fake-model", [{"role": "user", "content": canary["sse"]}])
    )

    # Nadoo: the handshake's access line (101, when the socket closed), its
    # connection, and the reply it asked for (run in a task of its own).
    nadoo_id = ids["nadoo"]
    (access,) = await wait_lines(json_gw, lambda r: of_id(nadoo_id)(r) and "/ws/chat/" in r["msg"])
    assert re.fullmatch(r"GET /ws/chat/s-[0-9a-f]{8} 101", access["msg"]), access
    for what in ("connection opened", "connection closed"):
        (line,) = await wait_lines(json_gw, said(nadoo_id, what))
        assert (line["transport"], line["flavour"]) == ("websocket", "nadoo")
    nadoo_reply = await reply_line(nadoo_id)
    assert nadoo_reply["msg"] == "reply finished"
    assert (nadoo_reply["message_id"], nadoo_reply["chat_id"]) == (
        start["message_id"],
        start["chat_id"],
    )

    # The web app: the socket's lines carry the handshake's id; the reply its POST's.
    for what in ("connection opened", "connection closed"):
        (line,) = await wait_lines(json_gw, said(ids["socket"], what))
        assert (line["transport"], line["flavour"]) == ("socketio", "openwebui")
    turn_reply = await reply_line(ids["turn"])
    assert turn_reply["msg"] == "reply finished" and turn_reply["message_id"] == message_id
    assert turn_reply["user_id"] == user_id
    assert turn_reply["flavour"] == "openwebui"  # asked by a POST, streamed to a socket

    # The model server was asked with each request's id.
    for key in ("sse", "nadoo", "turn"):
        assert upstream_request(fake_upstream, canary[key]).headers.get("X-Request-ID") == ids[key]

    # Neither what was asked nor what was answered is in the log.
    log = json_gw.log()
    for text in canary.values():
        assert text not in log
    assert "Fake reply to" not in log


async def test_a_failed_reply_has_its_reply_line(
    json_gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """A reply the model server refused (fake-error: HTTP 500) is counted as a failed
    reply (gateway_replies_total{status="failed"}); its "reply failed" line, with the
    error code, must be in the log too, whichever flavour asked."""
    user_id, token = user()
    nadoo_id, openai_id = rid("nadoo-fail"), rid("openai-fail")
    given, error, _ = await nadoo_chat(
        json_gw, token, "fail please", {"X-Request-ID": nadoo_id}, model="fake-error"
    )
    assert given == nadoo_id
    assert (error["type"], error["code"]) == ("error", "upstream_error"), error
    (line,) = await wait_lines(json_gw, said(nadoo_id, "reply failed"))
    assert line["code"] == "upstream_error" and line["user_id"] == user_id

    resp, _ = await openai_stream(
        json_gw, token, "fail please", {"X-Request-ID": openai_id}, model="fake-error"
    )
    assert resp.status == 502 and resp.headers["X-Request-ID"] == openai_id
    (access,) = await wait_lines(json_gw, lambda r: of_id(openai_id)(r) and "POST" in r["msg"])
    assert access["msg"] == "POST /v1/chat/completions 502"
    # The model server's failure, logged as a warning, carries the request's id.
    warned = [
        r
        for r in json_lines(json_gw)
        if r["level"] == "WARNING" and r.get("request_id") == openai_id
    ]
    assert [r["logger"] for r in warned] == ["gateway.upstream.openai"], warned
    (line,) = await wait_lines(json_gw, said(openai_id, "reply failed"))
    assert line["code"] == "upstream_error" and line["user_id"] == user_id


async def test_an_invalid_or_missing_request_id_is_replaced_by_a_fresh_one(
    json_gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    mark = uuid.uuid4().hex[:8]
    invalid = [
        f"a b{mark}",  # a space
        f"L{mark}" * 23,  # 207 characters
        "M" * (128 - len(mark)) + mark + "M",  # 129: one over
        f"semi;colon{mark}",
        f"slash/{mark}",
        "",
    ]
    longest = "K" * (128 - len(mark)) + mark  # 128: kept
    seen: list[str] = []
    async with session() as http:
        for given in [*invalid, None, longest]:
            headers = {"Authorization": f"Bearer {token}"}
            if given is not None:
                headers["X-Request-ID"] = given
            async with http.get(f"{json_gw.url}/v1/models", headers=headers) as resp:
                assert resp.status == 200
                got = resp.headers["X-Request-ID"]
            if given == longest:
                assert got == longest
            else:
                assert HEX_ID.match(got) and got != given, (given, got)
            seen.append(got)
    assert len(set(seen)) == len(seen)
    for got in seen:
        (line,) = await wait_lines(json_gw, of_id(got))
        assert line["msg"] == "GET /v1/models 200"

    # What the model server gets is the fresh id too.
    canary = f"canary-invalid-{uuid.uuid4().hex}"
    resp, _ = await openai_stream(json_gw, token, canary, {"X-Request-ID": f"a b{mark}"})
    fresh = resp.headers["X-Request-ID"]
    assert HEX_ID.match(fresh)
    assert upstream_request(fake_upstream, canary).headers.get("X-Request-ID") == fresh

    log = json_gw.log()
    assert not [bad for bad in invalid if bad and bad in log]


async def test_a_peer_that_is_not_a_trusted_proxy_cannot_choose_its_id(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8",
        }
    )
    _, token = user()
    chosen = rid("chosen-by-client")
    canary = f"canary-untrusted-{uuid.uuid4().hex}"
    resp, _ = await openai_stream(gw, token, canary, {"X-Request-ID": chosen})
    assert resp.status == 200
    fresh = resp.headers["X-Request-ID"]
    assert HEX_ID.match(fresh)
    assert upstream_request(fake_upstream, canary).headers.get("X-Request-ID") == fresh
    (line,) = await wait_lines(gw, lambda r: of_id(fresh)(r) and r["msg"].startswith("POST"))
    assert line["msg"] == "POST /v1/chat/completions 200"
    assert chosen not in gw.log()


async def test_an_access_line_says_who_what_how_long_and_how_much(
    json_gw: GatewayProcess,
) -> None:
    user_id, token = user()
    cases = [
        ({"Authorization": f"Bearer {token}"}, 200, user_id),
        ({"Authorization": f"Bearer {API_KEY}"}, 200, "keyuser"),
        ({}, 401, None),
    ]
    async with session() as http:
        for headers, status, who in cases:
            async with http.get(f"{json_gw.url}/v1/models", headers=headers) as resp:
                body = await resp.read()
                assert resp.status == status
                request_id = resp.headers["X-Request-ID"]
            (line,) = await wait_lines(json_gw, of_id(request_id))
            assert line["level"] == "INFO" and line["logger"] == "gateway.access"
            assert line["msg"] == f"GET /v1/models {status}"
            assert line["user_id"] == who
            assert line["remote"] == "127.0.0.1"
            assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 10_000
            # `bytes`: what was written for the response — its body, and (as aiohttp's
            # own %b) its status line and headers.
            assert isinstance(line["bytes"], int)
            assert len(body) < line["bytes"] < len(body) + 1024, (len(body), line)
    assert API_KEY not in json_gw.log()


async def test_probes_and_scrapes_are_not_logged_at_info(json_gw: GatewayProcess) -> None:
    _, token = user()
    probe_ids = []
    async with session() as http:
        for path in ("/health", "/health/db", "/ready?upstreams=0", "/metrics"):
            async with http.get(f"{json_gw.url}{path}") as resp:
                assert resp.status == 200, path
                probe_ids.append(resp.headers["X-Request-ID"])
        async with http.get(
            f"{json_gw.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            after = resp.headers["X-Request-ID"]
    await wait_lines(json_gw, of_id(after))  # written after the probes' would have been
    probes = [
        r
        for r in access_lines(json_lines(json_gw))
        if re.match(r"GET /(health|ready|metrics)", r["msg"])
    ]
    assert probes == []
    log = json_gw.log()
    assert [i for i in probe_ids if i in log] == []


async def test_tokens_sent_in_the_query_or_refused_are_never_logged(
    json_gw: GatewayProcess,
) -> None:
    """A socket's token in the query (`?token=`): the logged path has no query, and
    no token — good or refused, JWT or API key — is anywhere in the log."""
    _, token = user()
    refused_token = make_token("late", ttl_s=-60)
    ragflow = await ragflow_account(json_gw)
    nadoo_id, rag_id = rid("nadoo-query"), rid("ragflow-query")

    given, _, frames = await nadoo_chat(json_gw, token, "hi", {"X-Request-ID": nadoo_id})
    assert given == nadoo_id and frames[-1]["type"] == "response_end"
    async with websockets.connect(
        ragflow_url(json_gw, ragflow.ragflow_key), additional_headers={"X-Request-ID": rag_id}
    ) as ws:
        await ws.send(ragflow_question(ragflow))
        while (frame := await recv_json(ws)) != RAGFLOW_END:
            assert frame["code"] == 0, frame
    refused_id = rid("refused-query")
    url = f"ws://127.0.0.1:{json_gw.port}/ws/chat/refused?token={refused_token}"
    async with websockets.connect(url, additional_headers={"X-Request-ID": refused_id}) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    async with session() as http:
        async with http.get(
            f"{json_gw.url}/v1/models", headers={"Authorization": f"Bearer {refused_token}"}
        ) as resp:
            assert resp.status == 401

    (line,) = await wait_lines(json_gw, lambda r: of_id(nadoo_id)(r) and "GET" in r["msg"])
    assert re.fullmatch(r"GET /ws/chat/s-[0-9a-f]{8} 101", line["msg"]), line
    (line,) = await wait_lines(json_gw, lambda r: of_id(rag_id)(r) and "GET" in r["msg"])
    assert line["msg"] == "GET /v1/ws/chat 101"
    (line,) = await wait_lines(json_gw, lambda r: of_id(refused_id)(r) and "GET" in r["msg"])
    assert line["msg"] == "GET /ws/chat/refused 101" and line["user_id"] is None

    log = json_gw.log()
    assert "token=" not in log and "?seq" not in log
    for secret in (token, refused_token, ragflow.ragflow_key, ragflow.token):
        assert secret not in log
    for jwt_token in (token, refused_token, ragflow.token):
        _, payload, signature = jwt_token.split(".")
        assert payload not in log and signature not in log


def connection_lines(request_id: str) -> Callable[[Line], bool]:
    return lambda r: r.get("request_id") == request_id and r["msg"].startswith("connection ")


async def test_connection_lines_name_their_user(json_gw: GatewayProcess) -> None:
    """Each transport's "connection opened"/"connection closed" lines carry the user
    the connection authenticated as (its token in the handshake)."""
    user_id, token = user()
    ids = {"sse": rid("sse-user"), "websocket": rid("ws-user"), "socketio": rid("sio-user")}
    resp, _ = await openai_stream(json_gw, token, "hi", {"X-Request-ID": ids["sse"]})
    assert resp.status == 200
    await nadoo_chat(json_gw, token, "hi", {"X-Request-ID": ids["websocket"]})
    sock = await PySocket().connect(json_gw.url, token, headers={"X-Request-ID": ids["socketio"]})
    await sock.close()
    for transport, request_id in ids.items():
        lines = await wait_lines(json_gw, connection_lines(request_id), 2)
        assert [r["msg"] for r in lines] == ["connection opened", "connection closed"]
        assert [(r["transport"], r["user_id"]) for r in lines] == [(transport, user_id)] * 2


async def test_a_socket_signed_in_after_it_opened_is_named_from_then_on(
    json_gw: GatewayProcess,
) -> None:
    """A Socket.IO socket opened without a token, then signed in by `user-join` (as the
    web app does after its sign-in): a "connection identified" line, and its close
    line names the user."""
    user_id, token = user()
    request_id = rid("sio-join")
    sock = await PySocket().connect(json_gw.url, None, headers={"X-Request-ID": request_id})
    try:
        joined = await sock.client.call("user-join", {"auth": {"token": token}}, timeout=10)
        assert joined["id"] == user_id, joined
    finally:
        await sock.close()
    lines = await wait_lines(json_gw, connection_lines(request_id), 3)
    said = [(r["msg"], r["user_id"]) for r in lines]
    assert said == [
        ("connection opened", None),
        ("connection identified", user_id),
        ("connection closed", user_id),
    ], said


def http_200s(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_http_requests_total" and sample.labels == {"status": "200"}:
                return sample.value
    return 0.0


async def test_access_log_off_silences_access_lines_not_the_metrics(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_ACCESS_LOG": "false",
        }
    )
    _, token = user()
    async with session() as http:
        async with http.get(f"{gw.url}/metrics") as resp:
            before = http_200s(await resp.text())
        for _ in range(3):
            async with http.get(
                f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200
    resp, _ = await openai_stream(gw, token, "hi", {})
    assert resp.status == 200
    _, _, frames = await nadoo_chat(gw, token, "hi", {})
    assert frames[-1]["type"] == "response_end"
    failed, _ = await openai_stream(gw, token, "hi", {"X-Request-ID": "off-1"}, "fake-error")
    assert failed.status == 502 and failed.headers["X-Request-ID"] == "off-1"

    # The first scrape, 3 model lists, the stream: 200s counted all the same.
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        async with session() as http:
            async with http.get(f"{gw.url}/metrics") as resp:
                after = http_200s(await resp.text())
        if after - before >= 5 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert after - before == 5

    lines = json_lines(gw)
    assert access_lines(lines) == []
    # Other lines still come, with the request id of what they were about.
    assert any(r["logger"] == "gateway" and "listening" in r["msg"] for r in lines)
    warned = [r for r in lines if r["level"] == "WARNING" and r.get("request_id") == "off-1"]
    assert len(warned) == 1, lines


async def test_text_format_lines_carry_the_request_id(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "GATEWAY_LOG_FORMAT": "text",
            "GATEWAY_LOG_LEVEL": "DEBUG",
        }
    )
    user_id, token = user()
    request_id = rid("text")
    async with session() as http:
        async with http.get(
            f"{gw.url}/v1/models",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
        ) as resp:
            assert resp.status == 200 and resp.headers["X-Request-ID"] == request_id
        async with http.get(f"{gw.url}/health") as resp:
            health_id = resp.headers["X-Request-ID"]
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        lines = gw.log().splitlines()
        if any(f'request_id="{health_id}"' in line for line in lines):
            break
        assert time.monotonic() < deadline, lines
        await asyncio.sleep(0.05)
    assert lines
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        raise AssertionError(f"a JSON line in the text format: {parsed!r}")
    (access,) = [line for line in lines if f'request_id="{request_id}"' in line]
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gateway\.access: GET /v1/models 200 ", access
    ), access
    assert f'user_id="{user_id}"' in access and 'remote="127.0.0.1"' in access
    assert re.search(r" duration_ms=\d+(\.\d+)? bytes=\d+ ", access), access
    # A probe: at DEBUG.
    (probe,) = [line for line in lines if f'request_id="{health_id}"' in line]
    assert " DEBUG gateway.access: GET /health 200 " in probe


async def test_every_line_is_one_json_object(json_gw: GatewayProcess) -> None:
    """After this module's traffic (requests, sockets, replies, a failure's warning,
    refusals): every line of the log file, from the first, is one JSON object."""
    _, token = user()
    async with session() as http:
        async with http.get(f"{json_gw.url}/no/such/path") as resp:
            assert resp.status == 404
            request_id = resp.headers["X-Request-ID"]
        async with http.post(
            f"{json_gw.url}/v1/chat/completions",
            data=b"{not json",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
    # A warning with a JSON error body in a field of its own.
    failed, _ = await openai_stream(json_gw, token, "fail", {}, model="fake-error")
    assert failed.status == 502
    (line,) = await wait_lines(json_gw, of_id(request_id))
    assert line["msg"] == "GET /no/such/path 404"
    failed_id = failed.headers["X-Request-ID"]
    (line,) = await wait_lines(json_gw, lambda r: of_id(failed_id)(r) and "POST" in r["msg"])
    assert line["msg"] == "POST /v1/chat/completions 502"
    lines = json_lines(json_gw)
    (warned,) = [r for r in lines if r.get("request_id") == failed_id and r["level"] == "WARNING"]
    assert warned["detail"].startswith("HTTP 500: {") and json.loads(warned["detail"][10:])
    # No partial line left behind either: each record is written whole.
    assert json_gw.log().endswith("\n")
    assert {"gateway", "gateway.access"} <= {r["logger"] for r in lines}
    assert {"INFO", "WARNING"} <= {r["level"] for r in lines}
