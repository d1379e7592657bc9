"""OpenAI-compatible routes: `/v1/models` and `/v1/chat/completions` (docs/PROTOCOLS.md §2).

The same handlers answer Open WebUI's pure-API routes (`/api/models`,
`/api/chat/completions` without `chat_id`).

Diagnostic paced probe (what `gateway doctor` uses to see whether a proxy
buffers SSE): an authenticated streaming request carrying `X-Gateway-Probe:
pace` is answered, with no model call and nothing stored, by an ordinary
stream (the same transport and headers as a real reply) whose four content
chunks "probe 1 " … "probe 4 " leave `PROBE_GAP_S` apart, then `[DONE]`.
Through a proxy that streams, the first chunk arrives about 1.2 s before the
last; through one that buffers, all of them arrive together at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.commands import Ask
from gateway.context import gateway_of
from gateway.errors import UpstreamError
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.flavours import openai as codec
from gateway.transports.sse import stream_events


async def list_models(request: web.Request) -> web.Response:
    await principal_of(request)
    models = await gateway_of(request).router.models()
    return web.json_response(codec.models_body(model.as_dict() for model in models))


PROBE_HEADER = "X-Gateway-Probe"
PROBE_CHUNKS = 4
PROBE_GAP_S = 0.4
PROBE_MODEL = "gateway-probe"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    body = await read_json(request)
    if request.headers.get(PROBE_HEADER, "").lower() == "pace" and _streams(body):
        return await _paced_probe(request, body.get("model"), principal.user_id)
    ask = codec.decode_request(body)
    return await answer(request, ask, await gateway.service.open_reply(principal, ask))


def _streams(body: Any) -> bool:
    return isinstance(body, Mapping) and body.get("stream") is True


async def _paced_probe(request: web.Request, model: Any, user_id: str) -> web.StreamResponse:
    """The diagnostic stream of the module docstring: timing only, no model."""
    model = model if isinstance(model, str) and model else PROBE_MODEL
    message_id = f"chatcmpl-probe-{uuid.uuid4().hex}"

    async def paced() -> AsyncGenerator[Event, None]:
        started = time.monotonic()
        yield ReplyStarted(None, message_id, 0, user_id, None, model, time.time())
        for index in range(1, PROBE_CHUNKS + 1):
            if index > 1:
                await asyncio.sleep(PROBE_GAP_S)
            yield TextDelta(None, message_id, index, f"probe {index} ")
        content = "".join(f"probe {index} " for index in range(1, PROBE_CHUNKS + 1))
        elapsed_s = time.monotonic() - started
        yield ReplyFinished(
            None, message_id, PROBE_CHUNKS + 1, content, Usage(0, 0), "stop", elapsed_s
        )

    ask = Ask(model=model, messages=[], stream=True)
    return await answer(request, ask, paced())


async def answer(
    request: web.Request, ask: Ask, events: AsyncGenerator[Event, None], *, space: bool = True
) -> web.StreamResponse:
    """A pure-API reply as OpenAI SSE (`stream`) or one `chat.completion` JSON."""
    gateway = gateway_of(request)
    created = int(time.time())
    if ask.stream:
        encoder = codec.ChunkEncoder(ask.model, created, ask.include_usage, space)
        return await stream_events(
            request,
            events,
            encoder.encode,
            origins=gateway.origins,
            keepalive_s=gateway.settings.sse_keepalive_s,
        )
    completion_id = ""
    reasoning: list[str] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, ReplyStarted):
                completion_id = event.message_id
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, ReplyFailed):
                raise UpstreamError(event.message)
            elif isinstance(event, ReplyFinished):
                body = codec.completion_body(
                    completion_id,
                    ask.model,
                    created,
                    event.content,
                    event.finish_reason,
                    event.usage,
                    "".join(reasoning),
                )
                return web.json_response(body)
    raise UpstreamError("The reply ended without finishing")


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_post(f"{prefix}/chat/completions", chat_completions)
