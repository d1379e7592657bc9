"""Client for any OpenAI-compatible server (Ollama, vLLM, llama.cpp, OpenAI, LiteLLM).

One `aiohttp.ClientSession` per process, shared by every upstream, with a
connection limit far above aiohttp's default of 100 (200 concurrent streams
are normal).  Every request is sent with `stream: true` and
`stream_options.include_usage`; a non-streaming client gets the chunks
joined by the core.  This module is the I/O only: what the streamed bytes
mean (chunks, [DONE], the faults) is decoded by `chunks.py`, with a bounded
buffer.

Silence (`GATEWAY_UPSTREAM_READ_TIMEOUT_S`): until the response's headers,
aiohttp's own `sock_read`; from then on, `Silence`, one timer per reply that
is re-armed only when it fires, where `sock_read` re-arms a timer at every
read (it showed in the benches: bench/RESULTS.md).  Past the limit with
nothing read, the reply breaks off ("no data for N s").

A stream that ended with `[DONE]` gives its connection back to the pool, so the
next reply skips a TCP (and TLS) handshake.  A server's chunked terminator often
comes a moment after `[DONE]`: the reply ends at `[DONE]` all the same, and the
rest of the body is read in the background (bounded in bytes and time) before
the connection goes back; anything else closes it.

What reaches a client names the model and the kind of failure ("the model
server for 'llama3' answered HTTP 502"), never the server's URL (it may hold a
password, and says where the model servers live) nor what the server answered
(its error body may quote keys, prompts or internals): both go to the log,
masked (SECURITY.md, "What errors and health checks reveal").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from gateway import jsonwire
from gateway.edge import access, metrics, trace
from gateway.edge.access import HEADER
from gateway.errors import BadRequest, GatewayError, RateLimited, UpstreamError
from gateway.upstream import Chunk, ModelInfo
from gateway.upstream.chunks import MAX_EVENT_BYTES, BadStream, ChunkDecoder

log = logging.getLogger(__name__)

MAX_ERROR_BODY_BYTES = 64 * 1024
# Characters of an upstream's error body kept in the log line.
LOGGED_ERROR_CHARS = 500
# After [DONE]: how long, and how much, to read for the body's end before giving the
# connection back (past either, it is closed).
DRAIN_TIMEOUT_S = 5.0
DRAIN_MAX_BYTES = 64 * 1024
# Drains in progress (the loop holds tasks only weakly).
_DRAINING: set[asyncio.Task[None]] = set()


class OpenAIUpstream:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        connect_timeout_s: float,
        read_timeout_s: float | None,
    ) -> None:
        self.name = base_url
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._post_headers = {**self._headers, "Content-Type": "application/json"}
        self._read_timeout_s = read_timeout_s
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._list_timeout = aiohttp.ClientTimeout(
            total=connect_timeout_s + 5, sock_connect=connect_timeout_s
        )

    async def list_models(self) -> Sequence[ModelInfo]:
        url = f"{self._base_url}/models"
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._list_timeout
            ) as resp:
                if resp.status != 200:
                    raise failure(
                        f"the model server answered HTTP {resp.status} to its model list",
                        url,
                        f"HTTP {resp.status}",
                        kind="models_status",
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise failure(
                "the model server is unreachable",
                url,
                str(exc) or type(exc).__name__,
                kind="models_unreachable",
            ) from None
        models: list[ModelInfo] = []
        for entry in body.get("data", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                models.append(
                    ModelInfo(
                        id=entry["id"],
                        name=str(entry.get("name") or entry["id"]),
                        owned_by=str(entry.get("owned_by") or "openai"),
                        created=int(entry.get("created") or 0),
                    )
                )
        return models

    async def open(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> OpenAIStream:
        body = {
            **params,
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        url = f"{self._base_url}/chat/completions"
        request_id = access.current_id()
        headers = self._post_headers
        if request_id is not None:
            headers = {**headers, HEADER: request_id}
        traced = trace.current()
        sent = time.monotonic()
        try:
            resp = await self._session.post(
                url, data=jsonwire.body(body), headers=headers, timeout=self._stream_timeout
            )
        except RecursionError:
            # A body the client's JSON reader took (about 1,000 levels) that the writer
            # cannot write again, a few levels short of it: the client's to fix.
            raise BadRequest(
                "The request is nested too deeply to be sent to the model server"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            if traced is not None:
                took = round((time.monotonic() - sent) * 1000, 1)
                error = type(exc).__name__
                traced.add(
                    "api_call",
                    url=trace.safe_url(url),
                    method="POST",
                    status=None,
                    ms=took,
                    error=error,
                )
            raise failure(
                f"The model server for '{model}' is unreachable",
                self._base_url,
                str(exc) or type(exc).__name__,
                kind="unreachable",
            ) from None
        if resp.status != 200:
            try:
                raw = await resp.content.read(MAX_ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.close()
            _called(traced, url, resp.status, sent)
            raise _status_error(self._base_url, model, resp.status, raw)
        _called(traced, url, resp.status, sent)
        return OpenAIStream(resp, self._base_url, model, self._read_timeout_s)


def _called(traced: trace.Trace | None, url: str, status: int, sent: float) -> None:
    """The request as the reply's trace shows it: where (no secrets), how it went."""
    if traced is not None:
        took = round((time.monotonic() - sent) * 1000, 1)
        traced.add("api_call", url=trace.safe_url(url), method="POST", status=status, ms=took)


def failure(
    message: str,
    where: str,
    detail: str,
    error: type[GatewayError] = UpstreamError,
    *,
    kind: str,
) -> GatewayError:
    """`error(message)` for the client; where it happened and the detail to the log;
    counted by `kind` (`gateway_upstream_errors_total`)."""
    metrics.UPSTREAM_ERRORS.labels(kind).inc()
    log.warning(
        "model server failed: %s",
        message,
        extra={"upstream": where, "detail": detail[:LOGGED_ERROR_CHARS]},
    )
    return error(message)


def _status_error(base_url: str, model: str, status: int, raw: bytes) -> GatewayError:
    detail = f"HTTP {status}: {raw.decode('utf-8', errors='replace')}"
    if status == 400:
        message = f"The model server refused the request for '{model}' (HTTP 400)"
        return failure(message, base_url, detail, BadRequest, kind="refused")
    if status == 429:
        message = f"The model server for '{model}' is rate limiting (HTTP 429)"
        return failure(message, base_url, detail, RateLimited, kind="rate_limited")
    message = f"The model server for '{model}' answered HTTP {status}"
    return failure(message, base_url, detail, kind="http_error")


class Silence:
    """How long a response's body has been silent, watched by one timer that is
    re-armed only when it fires (at `last` + the limit): the reader sets `last`
    (`loop.time()`) and adds what it read to `taken` after each read.  Past the
    limit with nothing read, the body's pending read raises TimeoutError, unless
    bytes came in that the reader has not taken: then the reader is the slow one
    (its client is not reading), not the server, and the watch goes on.  aiohttp's
    `sock_read` timer, re-armed at every packet, is off for this response
    (`read_timeout = None` and its pending timer dropped, as aiohttp itself does
    for a WebSocket once it is open)."""

    __slots__ = ("_content", "_handle", "_limit_s", "_loop", "last", "taken")

    def __init__(self, resp: aiohttp.ClientResponse, limit_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = resp.content
        self._limit_s = limit_s
        self.last = self._loop.time()
        self.taken = 0
        connection = resp.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None
            connection.protocol.start_timeout()  # with no timeout: drops the pending one
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self.last + limit_s, self._check
        )

    def _check(self) -> None:
        due, now = self.last + self._limit_s, self._loop.time()
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        if self._content.total_bytes > self.taken:
            self.last = now  # the server sent more than the reader took
            self._handle = self._loop.call_at(now + self._limit_s, self._check)
            return
        self._handle = None
        self._content.set_exception(TimeoutError(f"no data for {self._limit_s:g} s"))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class OpenAIStream:
    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        base_url: str,
        model: str,
        read_timeout_s: float | None = None,
    ) -> None:
        self._resp = resp
        self._base_url = base_url
        self._model = model
        self._read_timeout_s = read_timeout_s
        self._handed_back = False

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        # What the bytes mean is `chunks.py`'s; here: reading them, and the log.
        decoder = ChunkDecoder(self._model, MAX_EVENT_BYTES)
        limit_s = self._read_timeout_s
        silence = None if limit_s is None else Silence(self._resp, limit_s)
        now = asyncio.get_running_loop().time
        try:
            async for raw in self._resp.content.iter_any():
                if silence is not None:
                    silence.last = now()
                    silence.taken += len(raw)
                for chunk in decoder.feed(raw):
                    yield chunk
                if decoder.done:
                    self._hand_back()
                    return
            for chunk in decoder.close():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise failure(
                f"The model server for '{self._model}' broke off the reply",
                self._base_url,
                str(exc) or type(exc).__name__,
                kind="broken_off",
            ) from None
        except BadStream as exc:
            raise failure(exc.message, self._base_url, exc.detail, kind="bad_stream") from None
        finally:
            if silence is not None:
                silence.stop()
            if decoder.skipped:
                log.warning(
                    "model server sent deltas with nothing readable (content that is not text, "
                    "a tool call with no id, name or arguments); they were skipped",
                    extra={
                        "model": self._model,
                        "upstream": self._base_url,
                        "count": decoder.skipped,
                        "shapes": decoder.unreadable,
                    },
                )

    def _hand_back(self) -> None:
        """The reply is complete: the connection goes back to the pool once the body
        has ended (at once if it already has)."""
        self._handed_back = True
        if self._resp.content.is_eof():
            self._resp.release()
            return
        task = asyncio.get_running_loop().create_task(_drain(self._resp))
        _DRAINING.add(task)
        task.add_done_callback(_DRAINING.discard)

    async def aclose(self) -> None:
        # close(), not release(): the upstream must see the connection go so it
        # stops generating; a half-read response cannot be reused anyway.
        if not self._handed_back and not self._resp.closed:
            self._resp.close()


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] to the body's end, then release; else close."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            left = DRAIN_MAX_BYTES
            while left > 0 and (data := await resp.content.readany()):
                left -= len(data)
    except (TimeoutError, aiohttp.ClientError):
        pass
    if resp.content.is_eof():
        resp.release()
    else:
        resp.close()
