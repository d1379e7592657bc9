"""OpenAI-compatible routes: `/v1/models` and `/v1/chat/completions` (PROTOCOLS.md §2).

The same handlers answer Open WebUI's pure-API routes (`/api/models`,
`/api/chat/completions` without `chat_id`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.commands import Ask
from gateway.context import gateway_of
from gateway.errors import UpstreamError
from gateway.events import Event, ReasoningDelta, ReplyFailed, ReplyFinished, ReplyStarted
from gateway.flavours import openai as codec
from gateway.transports.sse import stream_events


async def list_models(request: web.Request) -> web.Response:
    await principal_of(request)
    models = await gateway_of(request).router.models()
    return web.json_response(codec.models_body(model.as_dict() for model in models))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    ask = codec.decode_request(await read_json(request))
    return await answer(request, ask, await gateway.service.open_reply(principal, ask))


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
