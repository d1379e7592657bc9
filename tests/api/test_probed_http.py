"""What a probe of every HTTP route found (2026-12-07), each on the session's real
gateway (its log read for tracebacks), each a 500 or a broken log line before:

    an imported chat's `created_at` past a 64-bit integer      500 (OverflowError)
        now: taken as absent, as any `created_at` that is no integer
    a reply's message id with CR/LF (or 9,000 characters) in a chat without it:
    the `X-Gateway-Repaired` header quoting it                  no response at all,
                                                                or 500 when streaming
        now: the header's control characters escaped, its length bounded
    a token whose bytes are not UTF-8 (`Bearer \\xff\\xfe`)      500 on every route;
                                                                an "endpoint failed"
                                                                traceback on sockets
        now: 401 "Invalid token", 1008 on sockets
    `Content-Encoding: gzip` on a body that is not             500
        now: 415 in the route's shape (a compressed body is refused,
        whatever it holds: `plain_bodies`)
    a path with `%0d%0a` or `%00`                              the access line split
                                                                in two, or a NUL in
                                                                the log
        now: the control characters escaped
    a header past 8,190 bytes, a request line that is not HTTP
                                                                aiohttp's text/plain
                                                                400, quoting the
                                                                header (a token)
        now: 400 `{"detail": …}` naming the fault's kind, quoting nothing
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import uuid

import aiohttp
import pytest

from tests.clients import get_json, post_json
from tests.gatewayproc import GatewayProcess, make_token


@pytest.fixture
def token() -> str:
    return make_token(f"probed-{uuid.uuid4().hex[:8]}")


async def test_an_imported_chats_time_past_64_bits_is_taken_as_absent(
    gateway: GatewayProcess, token: str
) -> None:
    offset = len(gateway.log())
    for field in ("created_at", "updated_at"):
        body = {"chat": {"title": "T", "history": {"messages": {}}}, field: 2**63}
        chat = await post_json(f"{gateway.url}/api/v1/chats/import", token, body)
        assert 0 < chat[field] < 2**63
    assert gateway.troubles_since(offset) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_message_id_is_quoted_in_a_header_safely(
    gateway: GatewayProcess, token: str, stream: bool
) -> None:
    offset = len(gateway.log())
    step1 = {
        "chat": {
            "title": "t",
            "history": {"messages": {"u1": {"id": "u1", "role": "user", "content": "hm"}}},
        }
    }
    # (The longest id a reply may have: 9,000 characters are refused, 400, since.)
    for message_id in ("x\r\nSet-Cookie: pwn=1", "z" * 256):
        chat = await post_json(f"{gateway.url}/api/v1/chats/new", token, step1)
        body = {"chat_id": chat["id"], "id": message_id, "model": "fake-model", "stream": stream}
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{gateway.url}/api/chat/completions", json=body, headers=headers) as resp,
        ):
            assert resp.status == 200
            await resp.read()
            repaired = resp.headers["X-Gateway-Repaired"]
            assert "Set-Cookie" not in resp.headers
            assert "\r" not in repaired and "\n" not in repaired and len(repaired) <= 256
    body["id"] = "z" * 9000
    refused = await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=400)
    assert "256" in refused["detail"]
    assert gateway.troubles_since(offset) == []


async def raw_get(
    gateway: GatewayProcess, path: str, header: bytes, until: tuple[bytes, ...] = ()
) -> bytes:
    """A request written by hand: a header's bytes as they are (no client sends these);
    what came back, to the end or to the first of `until` (a socket's server waits
    for the close handshake this client never makes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    answer = b""
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
            + header
            + b"\r\n\r\n"
        )
        await writer.drain()
        while not any(mark in answer for mark in until):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            answer += chunk
        return answer
    finally:
        writer.close()


async def test_a_token_that_is_not_utf8_is_refused_401(gateway: GatewayProcess) -> None:
    offset = len(gateway.log())
    for header in (b"Authorization: Bearer \xff\xfe", b"x-api-key: \xc3", b"Cookie: token=\xff"):
        answer = await raw_get(gateway, "/api/v1/chats/", header)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


async def test_a_websocket_handshake_with_such_a_token_is_refused_without_a_traceback(
    gateway: GatewayProcess,
) -> None:
    offset = len(gateway.log())
    upgrade = (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    for path in ("/ws/chat/s-bytes", "/ragflow/v1/ws/chat"):
        marks = (b"Invalid token", b'"code": 109', b'"code":109')
        answer = await raw_get(gateway, path, upgrade + b"Authorization: Bearer \xff\xfe", marks)
        assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
        assert any(mark in answer for mark in marks), answer[:400]
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


async def test_a_compressed_body_is_415_in_the_routes_shape(
    gateway: GatewayProcess, token: str
) -> None:
    offset = len(gateway.log())
    body = b'{"name":"x"}'
    for path, shape in (
        (b"/api/v1/chats/tags", b'"detail"'),
        (b"/v1/chat/completions", b'"error"'),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(
                b"POST "
                + path
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 415"), answer[:300]
        assert shape in answer and b"Content-Encoding" in answer
    assert gateway.troubles_since(offset) == []


async def test_control_characters_in_a_path_do_not_split_the_access_line(
    gateway: GatewayProcess, token: str
) -> None:
    offset = len(gateway.log())
    await get_json(f"{gateway.url}/api/tasks/chat/%0d%0aFORGED%00", token)
    await asyncio.sleep(0.2)
    logged = gateway.log()[offset:]
    assert "\x00" not in logged
    [line] = [line for line in logged.splitlines() if "/api/tasks/chat/" in line]
    assert "\\x0d\\x0aFORGED\\x00" in line
    assert not any(line.startswith("FORGED") for line in logged.splitlines())


async def test_a_request_nested_nearly_as_deep_as_the_reader_takes_is_never_a_500(
    gateway: GatewayProcess, token: str
) -> None:
    """The body's JSON reader takes about 1,000 levels; a request a few levels short
    of that (in a content part, or tool parameters) could not be written again for the model
    server: a 500 and a traceback (found by the tool-calling probe, 2026-12-07).
    Now a 400 naming the depth, or the model server's own answer."""
    offset = len(gateway.log())
    statuses = set()
    said = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for depth in range(930, 1010, 5):
            deep = "[" * depth + "]" * depth
            part = '{"type":"text","text":"x","extra":' + deep + "}"
            raw = '{"model":"fake-model","messages":[{"role":"user","content":[' + part + "]}]}"
            url = f"{gateway.url}/v1/chat/completions"
            async with http.post(url, data=raw, headers=headers) as resp:
                statuses.add(resp.status)
                if resp.status == 400:
                    said.append((await resp.json())["error"]["message"])
    assert 500 not in statuses, statuses
    # Refused where the reader refuses, and a few levels short of it where the
    # request is written for the model server.
    assert any("nested too deeply to be sent" in message for message in said), said
    await asyncio.sleep(0.2)
    assert gateway.troubles_since(offset) == []


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request written as is; the response's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "said"),
    [
        # A header past aiohttp's 8,190 bytes: its text quoted the header's start,
        # the caller's token with it.
        (
            b"GET /api/v1/chats/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer eyJ"
            + b"A" * 9000
            + b"\r\n\r\n",
            "too long",
        ),
        (b"G\x00ET / HTTP/1.1\r\nHost: x\r\n\r\n", "not valid HTTP"),
    ],
    ids=["header_too_long", "bad_method"],
)
async def test_what_aiohttp_refuses_before_any_route_is_json_quoting_nothing(
    gateway: GatewayProcess, request_bytes: bytes, said: str
) -> None:
    status, headers, body = await asyncio.to_thread(raw_exchange, gateway.port, request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    detail = json.loads(body)["detail"]
    assert said in detail
    assert b"eyJ" not in body and b"AAAA" not in body


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compression_bomb_is_refused_unread_and_signed_out(
    gateway: GatewayProcess, encoding: str
) -> None:
    # A probe's 1 MiB of gzip that inflated to 1 GiB held the loop 1.2 s, anonymous:
    # aiohttp inflated it as it came, before any route refused it.  Now it is never
    # inflated (here 64 KiB for 64 MiB, whatever the encoding says).
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9)
    request = (
        b"POST /api/v1/auths/signin HTTP/1.1\r\nHost: x\r\nConnection: close"
        b"\r\nContent-Type: application/json"
        + f"\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(bomb)}\r\n\r\n".encode()
        + bomb
    )
    status, _, body = raw_exchange(gateway.port, request)
    assert status == 415 and "Content-Encoding" in json.loads(body)["detail"]
