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
from gateway.application.keys import ORIGINS, REALTIME, REPLIES, SETTINGS
from gateway.application.replies import finished
from gateway.edge import access
from gateway.errors import BadRequest
from gateway.flavours import openai as codec
from gateway.flavours.openwebui import (
    background_tasks,
    decode_completion_request,
    is_stored_request,
    is_web_app_turn,
    lost_socket,
)
from gateway.text import printable
from gateway.transports.sse import stream_events

REPAIRED_HEADER = "X-Gateway-Repaired"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    principal = await principal_of(request)
    body = await read_json(request)
    if not is_stored_request(body):
        if lost_socket(body):
            raise BadRequest(
                "This turn names the message its reply goes into but not the socket it "
                "streams to: 'session_id' is missing (the page's socket is not "
                "connected). Reconnect and send it again, or send 'messages' for a "
                "reply that is not stored."
            )
        return await openai.pure_api(request, principal, body)
    replies = request.app[REPLIES]
    access.noted_flavour("openwebui")  # its reply's log line says so, wherever it streams
    ask = decode_completion_request(body)
    if ask.session_id is not None and (
        is_web_app_turn(ask) or request.app[REALTIME].owner_of(ask.session_id) == principal.user_id
    ):
        # Frontend mode: answer at once; the reply streams over the user's sockets.
        turn = await replies.start_turn(principal, ask, background_tasks(body))
        answer = {"status": True, "task_ids": turn.task_ids, "chat_id": turn.chat_id}
        return web.json_response(answer)
    following = await replies.start_reply(principal, ask)
    try:
        headers = {REPAIRED_HEADER: header_value(following.repaired)} if following.repaired else {}
        created = int(time.time())
        if ask.stream:
            encoder = codec.ChunkEncoder(ask.model, created, ask.include_usage)
            return await stream_events(
                request,
                following.events,
                encoder.encode,
                origins=request.app[ORIGINS],
                keepalive_s=request.app[SETTINGS].sse_keepalive_s,
                stall_s=request.app[SETTINGS].stalled_client_s,
                flavour="openwebui",
                headers=headers,
            )
        end, before = await finished(following.events)
        reply = openai.completion(ask, created, end, before, following.message_id)
        return web.json_response(reply, headers=headers)
    finally:
        following.close()  # cancelled before its first event, `events` never ran


# A header value from what a client chose (a message id): at most this long.
MAX_HEADER_CHARS = 256


def header_value(text: str) -> str:
    """`text` as a header's value: control characters (a CR or LF would end the
    header, and aiohttp refuses to send it) escaped, and at most MAX_HEADER_CHARS."""
    safe = printable(text)
    return safe if len(safe) <= MAX_HEADER_CHARS else safe[: MAX_HEADER_CHARS - 3] + "..."


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat/completions", chat_completions)
    app.router.add_post("/api/v1/chat/completions", chat_completions)
