"""RAGFlow's HTTP API under `/ragflow` (docs/PROTOCOLS.md §3), so `RAGFlow(api_key,
base_url="http://host/ragflow")` from `ragflow-sdk` works.

    POST|GET|DELETE /ragflow/api/v1/chats          PUT /ragflow/api/v1/chats/{id}
    POST|GET|DELETE /ragflow/api/v1/chats/{chat_id}/sessions
    PUT  /ragflow/api/v1/chats/{chat_id}/sessions/{session_id}
    POST /ragflow/api/v1/chats/{chat_id}/completions                 SSE or JSON
    POST /ragflow/api/v1/chats_openai/{chat_id}/chat/completions     OpenAI shape
    POST /ragflow/v1/system/new_token

RAGFlow's "chat" is an assistant here; a "session" is a chat of the core.
Errors are HTTP 200 with RAGFlow's codes (`render_error`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from gateway import jsonwire
from gateway.api import openai
from gateway.api.common import HTTPStatusError, json_array, principal_of, read_json
from gateway.application.assistants import (
    AssistantRecord,
    Assistants,
    ChatRecord,
    now_ms,
    session_extra,
)
from gateway.application.keys import ACCOUNTS, ASSISTANTS, ORIGINS, REPLIES, SETTINGS
from gateway.application.replies import finished
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, GatewayError, UpstreamError
from gateway.flavours import openai as openai_codec
from gateway.flavours import ragflow as codec
from gateway.transports.sse import send_all, stream_events

PREFIX = "/ragflow/api/v1"


def render_error(error: GatewayError) -> web.Response:
    """RAGFlow answers HTTP 200 with the error in `code`; a route that does not
    exist keeps its real status."""
    status = error.http_status if isinstance(error, HTTPStatusError) else 200
    return web.json_response(codec.error_body(error), status=status)


def _ok(data: Any = None) -> web.Response:
    return web.json_response(codec.ok(data))


async def _context(request: web.Request) -> tuple[Principal, Assistants]:
    return await principal_of(request), request.app[ASSISTANTS]


def _view(assistant: AssistantRecord) -> dict[str, Any]:
    return codec.assistant_body(
        assistant.id,
        assistant.user_id,
        assistant.name,
        assistant.config,
        assistant.created_at_ms,
        assistant.updated_at_ms,
    )


# Past this, a page is empty whatever the data (and its offset would not fit a
# database's integer).
MAX_PAGE = 1_000_000


def _page(request: web.Request) -> tuple[int, int]:
    try:
        page = max(1, int(request.query.get("page", "1")))
        size = max(1, min(1000, int(request.query.get("page_size", "30"))))
    except ValueError:
        raise BadRequest("`page` and `page_size` must be integers") from None
    if page > MAX_PAGE:
        raise BadRequest(f"`page` must be at most {MAX_PAGE:,}")
    return (page - 1) * size, size


def _newest_first(request: web.Request) -> bool:
    # RAGFlow reads desc as true unless it is the string "false".
    return request.query.get("desc", "true").lower() != "false"


def _ids(body: Any) -> list[str] | None:
    ids = body.get("ids") if isinstance(body, Mapping) else None
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise BadRequest("`ids` must be a list of strings")
    return ids or None


def _deleted(done: int, errors: list[str]) -> web.Response:
    if errors and not done:
        raise codec.DataError("; ".join(errors))
    return _ok({"success_count": done, "errors": errors} if errors else None)


# -- assistants ------------------------------------------------------------------
async def create_assistant(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    replies = request.app[REPLIES]
    known = await replies.model_ids()
    settings = codec.decode_assistant(await read_json(request), creating=True, known_models=known)
    model = settings.get("llm", {}).get("model_name") or await replies.pick_model(None)
    return _ok(_view(await assistants.create(principal, settings, model)))


async def list_assistants(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    skip, limit = _page(request)
    assistant_id, name = request.query.get("id"), request.query.get("name")
    found = await assistants.listed(
        principal,
        assistant_id=assistant_id,
        name=name,
        newest_first=_newest_first(request),
        skip=skip,
        limit=limit,
    )
    if not found and (assistant_id or name):
        raise codec.DataError("The chat doesn't exist")
    return _ok([_view(assistant) for assistant in found])


async def update_assistant(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    assistant = await assistants.owned(
        principal, request.match_info["id"], "You do not own the chat"
    )
    known = await request.app[REPLIES].model_ids()
    settings = codec.decode_assistant(await read_json(request), creating=False, known_models=known)
    await assistants.update(assistant, settings)
    return _ok()


async def delete_assistants(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    ids = _ids(await read_json(request))
    if ids is None:
        ids = [a.id for a in await assistants.listed(principal)]
    done, errors = 0, []
    for assistant_id in dict.fromkeys(ids):
        try:
            assistant = await assistants.owned(principal, assistant_id)
        except GatewayError:
            errors.append(f"Assistant({assistant_id}) not found.")
            continue
        await assistants.delete(assistant)
        done += 1
    return _deleted(done, errors)


# -- sessions --------------------------------------------------------------------
def _session_view(chat: ChatRecord, messages: list[dict[str, Any]]) -> dict[str, Any]:
    extra = session_extra(chat)
    return codec.session_body(
        chat.id,
        chat.assistant_id or "",
        chat.title,
        codec.session_messages(str(extra.get("opener") or ""), messages),
        chat.created_at * 1000,
        chat.updated_at * 1000,
        str(extra.get("user_id") or ""),
    )


async def create_session(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    assistant = await assistants.owned(
        principal, request.match_info["chat_id"], "You do not own the assistant."
    )
    body = await read_json(request) if request.can_read_body else {}
    body = body if isinstance(body, Mapping) else {}
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise codec.DataError("`name` can not be empty.")
    end_user = body.get("user_id")
    end_user = end_user if isinstance(end_user, str) else ""
    if name is None:
        chat = await assistants.create_session(assistant, end_user=end_user)
    else:
        chat = await assistants.create_session(assistant, name, end_user)
    return _ok(_session_view(chat, []))


async def list_sessions(request: web.Request) -> web.StreamResponse:
    principal, assistants = await _context(request)
    chat_id = request.match_info["chat_id"]
    assistant = await assistants.owned(
        principal, chat_id, f"You don't own the assistant {chat_id}."
    )
    sessions = await assistants.sessions(
        assistant,
        session_id=request.query.get("id"),
        name=request.query.get("name"),
        end_user=request.query.get("user_id"),
    )
    by = "updated_at" if request.query.get("orderby") == "update_time" else "created_at"
    sessions.sort(key=lambda chat: (getattr(chat, by), chat.id), reverse=_newest_first(request))
    skip, limit = _page(request)

    async def views() -> AsyncIterator[dict[str, Any]]:
        for chat in sessions[skip : skip + limit]:
            yield _session_view(chat, await assistants.messages(chat))

    # A session at a time: a page is up to 1,000 whole sessions (a probe's 378 MB).
    return await json_array(request, views(), inside=_DATA)


# RAGFlow's success envelope around a streamed list (`codec.ok`).
_DATA = (
    jsonwire.dumps(codec.ok())[:-1].encode() + b',"data":',
    b"}",
)


async def rename_session(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    assistant = await assistants.owned(principal, request.match_info["chat_id"])
    chat = await assistants.session(
        assistant, request.match_info["session_id"], "Session does not exist"
    )
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be a JSON object")
    if "message" in body or "messages" in body:
        raise codec.DataError("`message` can not be change")
    if "reference" in body:
        raise codec.DataError("`reference` can not be change")
    if "name" in body:
        if not isinstance(body["name"], str) or not body["name"].strip():
            raise codec.DataError("`name` can not be empty.")
        await assistants.rename_session(chat, body["name"])
    return _ok()


async def delete_sessions(request: web.Request) -> web.Response:
    principal, assistants = await _context(request)
    assistant = await assistants.owned(
        principal, request.match_info["chat_id"], "You don't own the chat"
    )
    ids = _ids(await read_json(request)) if request.can_read_body else None
    if ids is None:
        ids = [chat.id for chat in await assistants.sessions(assistant)]
    done, errors = 0, []
    for session_id in dict.fromkeys(ids):
        try:
            chat = await assistants.session(assistant, session_id)
        except GatewayError:
            errors.append(f"The chat doesn't own the session {session_id}")
            continue
        await assistants.delete_session(chat)
        done += 1
    return _deleted(done, errors)


# -- asking ----------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    principal, assistants = await _context(request)
    chat_id = request.match_info["chat_id"]
    body = await read_json(request)
    stream, _ = codec.decode_options(body)
    assistant = await assistants.owned(principal, chat_id, f"You don't own the chat {chat_id}")
    if not body.get("session_id"):
        # RAGFlow ≤ 0.23: a question without a session opens one and answers
        # with its opener (and the new session's id) only.
        opener = assistants.opener(assistant)
        chat = await assistants.create_session(assistant)
        if stream is False:
            return _ok(codec.answer_data(opener, None, chat.id))
        frames = codec.opener_frames(opener, chat.id)
        return await send_all(request, [codec.sse(f) for f in frames], request.app[ORIGINS])
    question = codec.decode_question(body, chat_id)
    session, history = await assistants.session_and_history(assistant, question.session_id or "")
    settings = request.app[SETTINGS]
    async with request.app[REPLIES].follow() as (room, events):
        turn = await assistants.ask(
            principal, assistant, session, question.question, rooms=(room,), history=history
        )
        if question.stream:
            encoder = codec.AnswerEncoder(question.answer_mode or settings.ragflow_sse_answer_mode)
            return await stream_events(
                request,
                events,
                lambda event: [codec.sse(frame) for frame in encoder.encode(event)],
                origins=request.app[ORIGINS],
                keepalive_s=settings.sse_keepalive_s,
                stall_s=settings.stalled_client_s,
                flavour="ragflow",
            )
        try:
            end, _ = await finished(events)
        except UpstreamError as exc:
            failed = codec.error_frame(
                codec.SERVER_ERROR, exc.message, turn.message_ids[0], session.id
            )
            return web.Response(text=failed, content_type="application/json")
        if end.cancelled:
            stopped = codec.stopped_frame(end.message_id, session.id)
            return web.Response(text=stopped, content_type="application/json")
        return _ok(codec.answer_data(end.content, end.message_id, session.id))


async def openai_completions(request: web.Request) -> web.StreamResponse:
    """RAGFlow's OpenAI-compatible route: the assistant's model and prompt, the
    request's messages; nothing is stored (as RAGFlow)."""
    principal, assistants = await _context(request)
    replies = request.app[REPLIES]
    chat_id = request.match_info["chat_id"]
    ask = openai_codec.decode_request(await read_json(request), tools=False)
    assistant = await assistants.owned(principal, chat_id, f"You don't own the chat {chat_id}")
    messages = [m for m in ask.messages if m.get("role") != "system"]
    while messages and messages[0].get("role") == "assistant":
        messages.pop(0)
    if not messages or messages[-1].get("role") != "user":
        raise codec.DataError("The last content of this conversation is not from user.")
    system = {"role": "system", "content": assistants.system_prompt(assistant)}
    ask = dataclasses.replace(
        ask,
        model=await replies.pick_model(assistants.model_of(assistant)),
        messages=[system, *messages],
        params={**assistants.model_params(assistant), **ask.params},
    )
    return await openai.answer(request, ask, await replies.open(principal, ask), space=False)


async def new_token(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    token = await request.app[ACCOUNTS].new_key(principal, kind="ragflow")
    created = now_ms()
    data = {
        "token": token,
        "tenant_id": principal.user_id,
        "beta": uuid.uuid4().hex,
        "create_time": created,
        "create_date": codec.http_date(created),
        "update_time": None,
        "update_date": None,
    }
    return web.json_response({"code": 0, "message": "success", "data": data})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{PREFIX}/chats", create_assistant)
    r.add_get(f"{PREFIX}/chats", list_assistants)
    r.add_delete(f"{PREFIX}/chats", delete_assistants)
    r.add_put(f"{PREFIX}/chats/{{id}}", update_assistant)
    r.add_post(f"{PREFIX}/chats/{{chat_id}}/sessions", create_session)
    r.add_get(f"{PREFIX}/chats/{{chat_id}}/sessions", list_sessions)
    r.add_delete(f"{PREFIX}/chats/{{chat_id}}/sessions", delete_sessions)
    r.add_put(f"{PREFIX}/chats/{{chat_id}}/sessions/{{session_id}}", rename_session)
    r.add_post(f"{PREFIX}/chats/{{chat_id}}/completions", completions)
    r.add_post(f"{PREFIX}/chats_openai/{{chat_id}}/chat/completions", openai_completions)
    r.add_post("/ragflow/v1/system/new_token", new_token)
