"""Open WebUI's `/api/chat/completions`: pure API, or a reply stored in a chat.

Frontend mode (the web app, `session_id` of its socket): the turn is stored and
`{"status": true, "task_ids": [...], "chat_id"}` comes back at once; the reply
reaches every socket of the user as `events`.

Backend-controlled mode (the "Backend-Controlled, UI-Compatible API Flow"):
the reply runs in its own task and lands in `chat.history.messages[id]`
whether or not this HTTP client stays; the response streams it as OpenAI
SSE (`stream: true`) or returns the OpenAI JSON when it ends.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.api import openai
from gateway.api.common import principal_of, read_json
from gateway.context import gateway_of
from gateway.errors import BadRequest, UpstreamError
from gateway.events import ReplyFailed, ReplyFinished
from gateway.fanout.hub import until_finished
from gateway.flavours import openai as codec
from gateway.flavours.openwebui import (
    decode_completion_request,
    is_stored_request,
    is_web_app_turn,
)
from gateway.transports.sse import stream_events

REPAIRED_HEADER = "X-Gateway-Repaired"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    if not is_stored_request(body):
        return await openai.chat_completions(request)
    gateway = gateway_of(request)
    principal = await principal_of(request)
    ask = decode_completion_request(body)
    if ask.session_id is not None and (
        is_web_app_turn(ask) or gateway.sockets.owner_of(ask.session_id) == principal.user_id
    ):
        # Frontend mode: answer at once; the reply streams over the user's sockets.
        turn = await gateway.service.start_turn(principal, ask)
        answer = {"status": True, "task_ids": turn.task_ids, "chat_id": turn.chat_id}
        return web.json_response(answer)
    if ask.chat_id is None or ask.message_id is None:
        raise BadRequest("'chat_id' and 'id' are required to answer into a chat")
    started = await gateway.service.start_reply(principal, ask.chat_id, ask.message_id, ask)
    headers = {REPAIRED_HEADER: started.repaired} if started.repaired else {}
    created = int(time.time())
    try:
        if ask.stream:
            encoder = codec.ChunkEncoder(ask.model, created, ask.include_usage)
            return await stream_events(
                request,
                until_finished(started.outbox),
                encoder.encode,
                origins=gateway.origins,
                keepalive_s=gateway.settings.sse_keepalive_s,
                headers=headers,
            )
        async for event in until_finished(started.outbox):
            if isinstance(event, ReplyFailed):
                raise UpstreamError(event.message)
            if isinstance(event, ReplyFinished):
                reply = codec.completion_body(
                    started.message_id,
                    ask.model,
                    created,
                    event.content,
                    event.finish_reason,
                    event.usage,
                )
                return web.json_response(reply, headers=headers)
        raise UpstreamError("The reply ended without finishing")
    finally:
        gateway.hub.unsubscribe(started.outbox)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat/completions", chat_completions)
    app.router.add_post("/api/v1/chat/completions", chat_completions)
