"""What a probe of the OpenAI and RAGFlow HTTP APIs found (2026-12-07), on real
gateways, the fake model server and raw sockets:

    a client that reads nothing more of a streamed reply     the model server's
    (a frozen reader, a closed TCP window)                    request held open as
                                                              long as it stays
                                                              connected (32 of
                                                              them per user)
        now: dropped after GATEWAY_STALLED_CLIENT_S of taking nothing while
        bytes wait for it, its model server's request closed
    a client that reads slowly                                 (unchanged: fed at
                                                              its pace, whole)
    `temperature: NaN` (Python's JSON reads it)                relayed: a body the
                                                              model server could
                                                              not read
    `stream_options.include_usage: "false"`                    read as true
        now: 400 in OpenAI's shape, whose error object now has its `param` (null)

The probe's other findings are pinned where their code is: the client gone as
the headers go out (`tests/transports/test_sse_client_gone.py`), llama.cpp's
`error:` field (`tests/vectors/upstream/error_field_mid_reply.json`), a RAGFlow
answer stopped before its end (`tests/vectors/ragflow/answers_cancelled.json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.bus.support import eventually
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

STALL_S = 1.0
WHOLE = reply_text("fake-flood", [])


@contextlib.asynccontextmanager
async def flooded(
    fake_upstream: FakeUpstream, start_gateway: Any, asking: str
) -> AsyncIterator[tuple[GatewayProcess, socket.socket, str]]:
    """A gateway of its own (the stall bound lowered), and a socket on it that asked
    for the flood (`ask_for_a_flood`); the question asked."""
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_STALLED_CLIENT_S": str(STALL_S)}
    )
    question = f"{asking} {time.monotonic_ns()}"
    sock = await asyncio.to_thread(ask_for_a_flood, gw, question)
    try:
        yield gw, sock, question
    finally:
        sock.close()


def ask_for_a_flood(gw: GatewayProcess, question: str) -> socket.socket:
    """A streamed OpenAI request for the fake model's 5 MB reply, on a socket with a
    small receive buffer; its response's headers read, nothing more."""
    body = json.dumps(
        {
            "model": "fake-flood",
            "stream": True,
            "messages": [{"role": "user", "content": question}],
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Bearer {make_token('stalled-reader')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(request)
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def test_a_stream_whose_client_takes_nothing_is_dropped_and_its_model_request_closed(
    fake_upstream: FakeUpstream, start_gateway: Any
) -> None:
    async with flooded(fake_upstream, start_gateway, "frozen reader") as (gw, sock, _):
        # The client reads nothing: the gateway's writes wait, then it is dropped and
        # its reply ended (the model server's request closed with it), long before
        # the model's 5 MB are through.
        await eventually(
            lambda: "reply cancelled" in gw.log(), timeout_s=STALL_S * 8, what="the reply ended"
        )
        log = gw.log()
        assert "slow event stream dropped: it took nothing for 1 s" in log
        ended = next(line for line in log.splitlines() if "reply cancelled" in line)
        assert 'model="fake-flood"' in ended and f"chars={len(WHOLE)}" not in ended
        # The connection is gone for the client too: reading finds its end.
        got = await asyncio.to_thread(read_to_the_end, sock)
        assert len(got) < len(WHOLE)


def read_to_the_end(sock: socket.socket) -> bytes:
    got = b""
    try:
        while piece := sock.recv(65536):
            got += piece
    except ConnectionResetError:
        pass  # aborted: what a dropped client sees
    return got


async def test_a_stream_whose_client_reads_slowly_gets_the_whole_reply(
    fake_upstream: FakeUpstream, start_gateway: Any
) -> None:
    async with flooded(fake_upstream, start_gateway, "slow reader") as (gw, sock, question):
        body = await asyncio.to_thread(read_slowly, sock)
    texts = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            texts.append(chunk["choices"][0]["delta"].get("content") or "")
    assert "".join(texts) == WHOLE
    assert body.rstrip().endswith(b"data: [DONE]")
    assert [r.finished for r in fake_upstream.requests_for(question)] == [True]
    assert "slow event stream dropped" not in gw.log()


def read_slowly(sock: socket.socket) -> bytes:
    """The whole chunked body, 16 KB at a time with a pause between: slower than the
    model writes, never still for as long as the stall bound."""
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        piece = sock.recv(16384)
        if not piece:
            break
        got += piece
        time.sleep(0.002)
    return dechunked(got)


def dechunked(raw: bytes) -> bytes:
    out, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


async def test_parameters_the_model_server_could_not_read_are_refused_in_openais_shape(
    gateway: GatewayProcess,
) -> None:
    headers = {
        "Authorization": f"Bearer {make_token('params')}",
        "Content-Type": "application/json",
    }
    question = '"messages":[{"role":"user","content":"hi"}]'
    for body, named in [
        # JSON has no NaN (Python's reader takes it): relayed, it made a body the
        # model server could not read.
        ('{"model":"fake-model",' + question + ',"temperature":NaN}', "NaN is not JSON"),
        (
            '{"model":"fake-model",' + question + ',"logit_bias":{"50256":-Infinity}}',
            "-Infinity is not JSON",
        ),
        ('{"model":"fake-model",' + question + ',"top_p":1e999}', "past a double"),
        # Past 64 bits: no model server reads one, and 4,000 digits cost quadratic time.
        ('{"model":"fake-model",' + question + ',"seed":18446744073709551616}', "past 64 bits"),
        ('{"model":"fake-model",' + question + ',"seed":1' + "0" * 4000 + "}", "past 64 bits"),
        # The string "false" read as true.
        (
            '{"model":"fake-model","stream":true,'
            + question
            + ',"stream_options":{"include_usage":"false"}}',
            "include_usage",
        ),
    ]:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway.url}/v1/chat/completions", data=body, headers=headers
            ) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
        # OpenAI's error object, `param` included.
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] is None
        assert named in error["message"]
