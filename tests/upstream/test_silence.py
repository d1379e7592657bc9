"""A model server that goes silent is given up on after GATEWAY_UPSTREAM_READ_TIMEOUT_S
of silence, and one that is slow but never silent that long is not.

Until the response's headers, aiohttp's `sock_read` counts the silence; from
then on `Silence` in `gateway/upstream/openai.py` does, one timer per reply
re-armed only when it fires.  Three model servers on loopback, with the limit at
0.6 s, each through a real gateway and an OpenAI SSE client:

* `hush`  — its first deltas, then nothing (the connection held open): the
            client has those deltas, then the error in its own protocol, about
            0.6 s after the last one; the model server's request is closed;
* `mute`  — never answers (no headers): the client gets a 502, about 0.6 s on;
* `drip`  — eight deltas 0.3 s apart (2.4 s in all, four times the limit): the
            whole reply, as the silence never lasts 0.6 s.

And `Silence` itself, on a real response from a server in the test's loop: a
reader that takes nothing for longer than the limit while the server goes on
sending is the slow one, and is not told the server broke off; one whose
server stopped is, at the limit, and aiohttp's own timer (armed by the last
packet) no longer decides it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.upstream.openai import Silence
from tests.fakes.upstream import FakeUpstream, Recorded, serve_app
from tests.gatewayproc import GatewayProcess, make_token

LIMIT_S = 0.6
DRIP_DELTAS, DRIP_GAP_S = 8, 0.3
HUSH_DELTAS = ["one ", "two "]


class Quiet(FakeUpstream):
    """The shared fake model server with three models of its own (above)."""

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in ("hush", "mute", "drip")]
        return web.json_response({"object": "list", "data": data})

    async def _reply(
        self, request: web.Request, body: dict[str, Any], record: Recorded
    ) -> web.StreamResponse:
        model = body["model"]
        if model == "mute":
            await asyncio.sleep(30)  # cancelled when the gateway gives up
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-quiet",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            record.chunks_sent += 1

        if model == "hush":
            for piece in HUSH_DELTAS:
                await send({"content": piece})
            await asyncio.sleep(30)  # cancelled when the gateway gives up
        for index in range(DRIP_DELTAS):
            await asyncio.sleep(DRIP_GAP_S)
            await send({"content": f"d{index} "})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.finished = True
        return response


@pytest.fixture
def quiet() -> Iterator[Quiet]:
    fake = Quiet()
    fake.start()
    yield fake
    fake.stop()


async def _stream(gw: GatewayProcess, model: str) -> AsyncIterator[tuple[float, Any]]:
    """(when, what) for each event of an OpenAI SSE reply: a chunk's JSON, or the
    HTTP status and body of a reply that never streamed."""
    headers = {"Authorization": f"Bearer {make_token('quiet-user')}"}
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status != 200:
                yield time.monotonic(), (resp.status, await resp.json())
                return
            async for line in resp.content:
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    yield (
                        time.monotonic(),
                        "[DONE]" if payload == b"[DONE]" else json.loads(payload),
                    )


def _content(chunk: Any) -> str:
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return ""
    return str(chunk["choices"][0].get("delta", {}).get("content") or "")


def _start(start_gateway: Any, quiet: Quiet) -> GatewayProcess:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": quiet.url, "GATEWAY_UPSTREAM_READ_TIMEOUT_S": str(LIMIT_S)}
    )
    return gw


async def test_a_model_server_silent_mid_reply_is_given_up_on(
    start_gateway: Any, quiet: Quiet
) -> None:
    gw = _start(start_gateway, quiet)
    events = [event async for event in _stream(gw, "hush")]
    chunks = [chunk for _, chunk in events]
    assert "".join(map(_content, chunks)) == "".join(HUSH_DELTAS)
    errors = [chunk["error"] for chunk in chunks if isinstance(chunk, dict) and "error" in chunk]
    assert len(errors) == 1, chunks
    assert errors[0]["message"] == "The model server for 'hush' broke off the reply"
    assert chunks[-1] == "[DONE]"
    last_delta = max(at for at, chunk in events if _content(chunk) == HUSH_DELTAS[-1])
    error_at = next(at for at, chunk in events if isinstance(chunk, dict) and "error" in chunk)
    silent = error_at - last_delta
    assert LIMIT_S * 0.7 <= silent < LIMIT_S + 1.5, f"given up after {silent:.2f} s of silence"
    # The model server's request is closed, and the log says why.
    (record,) = quiet.requests
    assert await asyncio.to_thread(record.ended.wait, 5)
    assert record.disconnected and not record.finished
    assert f"no data for {LIMIT_S:g} s" in gw.log()


async def test_a_model_server_that_never_answers_is_given_up_on(
    start_gateway: Any, quiet: Quiet
) -> None:
    gw = _start(start_gateway, quiet)
    began = time.monotonic()
    ((at, (status, body)),) = [event async for event in _stream(gw, "mute")]
    assert status == 502, body
    assert "'mute'" in json.dumps(body)
    assert LIMIT_S * 0.7 <= at - began < LIMIT_S + 1.5, f"answered after {at - began:.2f} s"


async def test_a_slow_model_server_that_is_never_silent_that_long_is_waited_for(
    start_gateway: Any, quiet: Quiet
) -> None:
    gw = _start(start_gateway, quiet)
    began = time.monotonic()
    chunks = [chunk async for _, chunk in _stream(gw, "drip")]
    took = time.monotonic() - began
    assert "".join(map(_content, chunks)) == "".join(f"d{i} " for i in range(DRIP_DELTAS))
    assert not [c for c in chunks if isinstance(c, dict) and "error" in c], chunks
    assert chunks[-1] == "[DONE]"
    assert took > DRIP_DELTAS * DRIP_GAP_S * 0.9 > 3 * LIMIT_S


# -- Silence on its own ----------------------------------------------------------------
async def _server(sends: int, gap_s: float) -> tuple[web.AppRunner, str]:
    """A body of `sends` pieces `gap_s` apart, then held open (silent) until closed."""

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(sends):
            await response.write(f"piece {index}\n".encode())
            await asyncio.sleep(gap_s)
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/", body)
    runner, port = await serve_app(app)
    return runner, f"http://127.0.0.1:{port}/"


async def _watched(
    sends: int, gap_s: float, idle_s: float
) -> tuple[int, BaseException | None, float]:
    """Read the body as `OpenAIStream` does, watched at LIMIT_S, after taking nothing
    for `idle_s`: (bytes read, what ended the reading, when, from the start)."""
    runner, url = await _server(sends, gap_s)
    timeout = aiohttp.ClientTimeout(sock_read=LIMIT_S)  # as the gateway asks for its headers
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(url) as resp:
                began = time.monotonic()
                silence = Silence(resp, LIMIT_S)
                now = asyncio.get_running_loop().time
                read, ended = 0, None
                await asyncio.sleep(idle_s)
                try:
                    async for raw in resp.content.iter_any():
                        silence.last, silence.taken = now(), silence.taken + len(raw)
                        read += len(raw)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    ended = exc
                finally:
                    silence.stop()
                return read, ended, time.monotonic() - began
    finally:
        await runner.cleanup()


async def test_a_reader_slower_than_its_server_is_not_told_the_server_is_silent() -> None:
    # 12 pieces 0.1 s apart while the reader takes nothing for 1.5 s (2.5 limits).
    read, ended, took = await _watched(sends=12, gap_s=0.1, idle_s=1.5)
    assert read == sum(len(f"piece {i}\n") for i in range(12)), (read, ended)
    # Then the server's own silence ends it, past the reader's idle time.
    assert isinstance(ended, TimeoutError) and str(ended) == f"no data for {LIMIT_S:g} s"
    assert took >= 1.5


async def test_a_silent_server_is_given_up_on_by_silence_not_by_aiohttps_timer() -> None:
    # Two pieces at once, then nothing: aiohttp's timer, armed by the last packet
    # before `Silence` took over, must not be what ends it.
    read, ended, took = await _watched(sends=2, gap_s=0.0, idle_s=0.0)
    assert read == len("piece 0\npiece 1\n")
    assert isinstance(ended, TimeoutError) and str(ended) == f"no data for {LIMIT_S:g} s", ended
    assert LIMIT_S * 0.7 <= took < LIMIT_S + 1.0
