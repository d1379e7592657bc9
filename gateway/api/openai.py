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
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.application.keys import ORIGINS, REPLIES, SETTINGS
from gateway.application.replies import finished
from gateway.commands import Ask
from gateway.edge.auth import Principal
from gateway.edge.stopping import stopped
from gateway.errors import SERVER_STOPPING, Unavailable
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.flavours import openai as codec
from gateway.transports.sse import stream_events


async def list_models(request: web.Request) -> web.Response:
    await principal_of(request)
    models = await request.app[REPLIES].models()
    return web.json_response(codec.models_body(model.as_dict() for model in models))


async def retrieve_model(request: web.Request) -> web.Response:
    """One model by its id (the OpenAI SDK's `models.retrieve`), found as a reply
    finds it: 404 `model_not_found`, or 502 when the server that may serve it is down."""
    await principal_of(request)
    model = await request.app[REPLIES].model(request.match_info["model"])
    return web.json_response(codec.model_body(model.as_dict()))


PROBE_HEADER = "X-Gateway-Probe"
PROBE_CHUNKS = 4
PROBE_GAP_S = 0.4
PROBE_MODEL = "gateway-probe"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    principal = await principal_of(request)
    return await pure_api(request, principal, await read_json(request))


async def pure_api(request: web.Request, principal: Principal, body: Any) -> web.StreamResponse:
    """A reply that is nothing but its answer (nothing stored); also Open WebUI's
    `/api/chat/completions` without a chat."""
    if request.headers.get(PROBE_HEADER, "").lower() == "pace" and _streams(body):
        return await _paced_probe(request, body.get("model"), principal.user_id)
    ask = codec.decode_request(body)
    return await answer(request, ask, await request.app[REPLIES].open(principal, ask))


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
    """A reply as OpenAI SSE (`stream`) or one `chat.completion` JSON."""
    created = int(time.time())
    if ask.stream:
        encoder = codec.ChunkEncoder(ask.model, created, ask.include_usage, space)
        return await stream_events(
            request,
            events,
            encoder.encode,
            origins=request.app[ORIGINS],
            keepalive_s=request.app[SETTINGS].sse_keepalive_s,
            stall_s=request.app[SETTINGS].stalled_client_s,
            flavour="openai",
        )
    try:
        end, before = await finished(events)
    except asyncio.CancelledError as cancelled:
        if not stopped(cancelled):
            raise
        raise Unavailable(SERVER_STOPPING) from None  # a 503 in the caller's protocol
    return web.json_response(completion(ask, created, end, before))


def completion(
    ask: Ask, created: int, end: ReplyFinished, before: list[Event], completion_id: str = ""
) -> dict[str, Any]:
    """The `chat.completion` JSON of a finished reply."""
    started = next((e for e in before if isinstance(e, ReplyStarted)), None)
    reasoning = "".join(e.text for e in before if isinstance(e, ReasoningDelta))
    return codec.completion_body(
        completion_id or (started.message_id if started else end.message_id),
        ask.model,
        created,
        end.content,
        end.finish_reason,
        end.usage,
        reasoning,
        codec.tool_calls(before),
    )


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get(f"{prefix}/models/{{model:.+}}", retrieve_model)
    app.router.add_post(f"{prefix}/chat/completions", chat_completions)
