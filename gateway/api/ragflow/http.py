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
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api import openai
from gateway.api.common import HTTPStatusError, principal_of, read_json
from gateway.application.accounts import create_api_key
from gateway.chat.assistants import Assistants, now_ms, session_extra
from gateway.chat.running import StopTarget
from gateway.chat.shapes import history_of
from gateway.chat.tree import current_path
from gateway.context import Gateway, gateway_of
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, GatewayError, UpstreamError
from gateway.events import ReplyFailed, ReplyFinished
from gateway.fanout.hub import until_finished
from gateway.flavours import openai as openai_codec
from gateway.flavours import ragflow as codec
from gateway.store import AssistantRecord, ChatRecord
from gateway.transports.sse import send_all, stream_events

PREFIX = "/ragflow/api/v1"


def render_error(error: GatewayError) -> web.Response:
    """RAGFlow answers HTTP 200 with the error in `code`; a route that does not
    exist keeps its real status."""
    status = error.http_status if isinstance(error, HTTPStatusError) else 200
    return web.json_response(codec.error_body(error), status=status)


def _ok(data: Any = None) -> web.Response:
    return web.json_response(codec.ok(data))


async def _context(request: web.Request) -> tuple[Gateway, Principal, Assistants]:
    gateway = gateway_of(request)
    return gateway, await principal_of(request), gateway.assistants


def _view(assistant: AssistantRecord) -> dict[str, Any]:
    return codec.assistant_body(
        assistant.id,
        assistant.user_id,
        assistant.name,
        assistant.config,
        assistant.created_at_ms,
        assistant.updated_at_ms,
    )


def _page(request: web.Request) -> tuple[int, int]:
    try:
        page = max(1, int(request.query.get("page", "1")))
        size = max(1, min(1000, int(request.query.get("page_size", "30"))))
    except ValueError:
        raise BadRequest("`page` and `page_size` must be integers") from None
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
    gateway, principal, assistants = await _context(request)
    known = [model.id for model in await gateway.router.models()]
    settings = codec.decode_assistant(await read_json(request), creating=True, known_models=known)
    model = settings.get("llm", {}).get("model_name") or await gateway.service.pick_model(None)
    config = codec.assistant_config(settings, model)
    return _ok(_view(await assistants.create(principal, settings["name"], config)))


async def list_assistants(request: web.Request) -> web.Response:
    gateway, principal, _ = await _context(request)
    skip, limit = _page(request)
    assistant_id, name = request.query.get("id"), request.query.get("name")
    found = await gateway.store.list_assistants(
        principal.user_id,
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
    gateway, principal, assistants = await _context(request)
    assistant = await assistants.owned(
        principal, request.match_info["id"], "You do not own the chat"
    )
    known = [model.id for model in await gateway.router.models()]
    settings = codec.decode_assistant(await read_json(request), creating=False, known_models=known)
    await assistants.update(assistant, settings)
    return _ok()


async def delete_assistants(request: web.Request) -> web.Response:
    gateway, principal, assistants = await _context(request)
    ids = _ids(await read_json(request))
    if ids is None:
        ids = [a.id for a in await gateway.store.list_assistants(principal.user_id)]
    done, errors = 0, []
    for assistant_id in dict.fromkeys(ids):
        try:
            assistant = await assistants.owned(principal, assistant_id)
        except GatewayError:
            errors.append(f"Assistant({assistant_id}) not found.")
            continue
        await gateway.store.delete_assistant(assistant.id)
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
    _, principal, assistants = await _context(request)
    assistant = await assistants.owned(
        principal, request.match_info["chat_id"], "You do not own the assistant."
    )
    body = await read_json(request) if request.can_read_body else {}
    body = body if isinstance(body, Mapping) else {}
    name = body.get("name", codec.DEFAULT_SESSION_NAME)
    if not isinstance(name, str) or not name.strip():
        raise codec.DataError("`name` can not be empty.")
    end_user = body.get("user_id")
    end_user = end_user if isinstance(end_user, str) else ""
    opener = codec.opener_of(assistant.config)
    chat = await assistants.create_session(assistant, name, opener, end_user)
    return _ok(_session_view(chat, []))


async def list_sessions(request: web.Request) -> web.Response:
    gateway, principal, assistants = await _context(request)
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
    views = []
    for chat in sessions[skip : skip + limit]:
        history = history_of(chat, await gateway.store.get_messages(chat.id))
        views.append(_session_view(chat, current_path(history) if history["currentId"] else []))
    return _ok(views)


async def rename_session(request: web.Request) -> web.Response:
    gateway, principal, assistants = await _context(request)
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
        chat.title = body["name"]
        chat.updated_at = int(time.time())
        await gateway.store.update_chat(chat)
    return _ok()


async def delete_sessions(request: web.Request) -> web.Response:
    gateway, principal, assistants = await _context(request)
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
        await gateway.service.replies.stop(StopTarget(chat.user_id, chat_id=chat.id))
        await gateway.store.delete_chat(chat.id)
        done += 1
    return _deleted(done, errors)


# -- asking ----------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    gateway, principal, assistants = await _context(request)
    chat_id = request.match_info["chat_id"]
    body = await read_json(request)
    stream, _ = codec.decode_options(body)
    assistant = await assistants.owned(principal, chat_id, f"You don't own the chat {chat_id}")
    if not body.get("session_id"):
        # RAGFlow ≤ 0.23: a question without a session opens one and answers
        # with its opener (and the new session's id) only.
        opener = codec.opener_of(assistant.config)
        chat = await assistants.create_session(assistant, codec.DEFAULT_SESSION_NAME, opener)
        if stream is False:
            return _ok(codec.answer_data(opener, None, chat.id))
        frames = codec.opener_frames(opener, chat.id)
        return await send_all(request, [codec.sse(frame) for frame in frames], gateway.origins)
    question = codec.decode_question(body, chat_id)
    session = await assistants.session(assistant, question.session_id or "")
    mode = question.answer_mode or gateway.settings.ragflow_sse_answer_mode
    room = f"conn:{uuid.uuid4().hex}"
    outbox = gateway.hub.subscribe([room])
    try:
        await assistants.ask(
            principal,
            assistant,
            session,
            question.question,
            system=codec.system_prompt(assistant.config),
            params=codec.model_params(assistant.config),
            rooms=(room,),
        )
        events = until_finished(outbox)
        if question.stream:
            encoder = codec.AnswerEncoder(mode)
            return await stream_events(
                request,
                events,
                lambda event: [codec.sse(frame) for frame in encoder.encode(event)],
                origins=gateway.origins,
                keepalive_s=gateway.settings.sse_keepalive_s,
            )
        async for event in events:
            if isinstance(event, ReplyFinished):
                return _ok(codec.answer_data(event.content, event.message_id, session.id))
            if isinstance(event, ReplyFailed):
                return web.json_response(_failed(event.message))
        raise UpstreamError("The answer ended without finishing")
    finally:
        gateway.hub.unsubscribe(outbox)


def _failed(message: str) -> dict[str, Any]:
    data = {"answer": f"**ERROR**: {message}", "reference": []}
    return {"code": codec.SERVER_ERROR, "message": message, "data": data}


async def openai_completions(request: web.Request) -> web.StreamResponse:
    """RAGFlow's OpenAI-compatible route: the assistant's model and prompt, the
    request's messages; nothing is stored (as RAGFlow)."""
    gateway, principal, assistants = await _context(request)
    chat_id = request.match_info["chat_id"]
    ask = openai_codec.decode_request(await read_json(request))
    assistant = await assistants.owned(principal, chat_id, f"You don't own the chat {chat_id}")
    messages = [m for m in ask.messages if m.get("role") != "system"]
    while messages and messages[0].get("role") == "assistant":
        messages.pop(0)
    if not messages or messages[-1].get("role") != "user":
        raise codec.DataError("The last content of this conversation is not from user.")
    system = {"role": "system", "content": codec.system_prompt(assistant.config)}
    model_name = assistant.config.get("llm", {}).get("model_name")
    ask = dataclasses.replace(
        ask,
        model=await gateway.service.pick_model(model_name if isinstance(model_name, str) else None),
        messages=[system, *messages],
        params={**codec.model_params(assistant.config), **ask.params},
    )
    events = await gateway.service.open_reply(principal, ask)
    return await openai.answer(request, ask, events, space=False)


async def new_token(request: web.Request) -> web.Response:
    gateway, principal, _ = await _context(request)
    token = await create_api_key(gateway.store, principal.user_id, kind="ragflow")
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
