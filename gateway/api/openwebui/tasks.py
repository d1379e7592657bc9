"""Open WebUI's task routes: list and stop running replies (docs/PROTOCOLS.md §1.2).

A task is one reply being generated; its id is the gateway's (the message id
is the client's and repeats across chats)::

    GET  /api/tasks                    {"tasks": [task_id, ...]}      admins: every reply
    GET  /api/tasks/chat/{chat_id}     {"task_ids": [...]}            the caller's replies
                                                                      ([] for others' chats)
    POST /api/tasks/chat/{chat_id}/stop   {"status": true, "message"} 404 if not the caller's
    POST /api/tasks/stop/{task_id}        {"status": true, "message"} owner or admin
    POST /api/v1/tasks/title/completions  {model, messages} → a completion whose text is
                                          {"title": …} (the rename's "generate")

The web app's Stop button calls the chat route; on every socket (re)connect
it asks the chat's task list to know whether a reply is still running.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.application.keys import CHATS, REPLIES
from gateway.application.replies import StopTarget
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.flavours.openwebui import is_temporary_chat


async def list_all(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    if not principal.is_admin:
        raise Forbidden("Only admins can list every task")
    return web.json_response({"tasks": await request.app[REPLIES].tasks()})


async def list_chat(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    chat_id = request.match_info["chat_id"]
    tasks = await request.app[REPLIES].tasks(chat_id=chat_id, user_id=principal.user_id)
    return web.json_response({"task_ids": tasks})


async def stop_chat(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    chat_id = request.match_info["chat_id"]
    stopped = await request.app[REPLIES].stop(StopTarget(principal.user_id, chat_id=chat_id))
    if not stopped and not is_temporary_chat(chat_id):
        await request.app[CHATS].owned(principal, chat_id)  # 404 for others' chats
    message = f"Stopped {stopped} task(s)." if stopped else "No tasks found."
    return web.json_response({"status": True, "message": message})


async def stop_task(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    task_id = request.match_info["task_id"]
    owner = None if principal.is_admin else principal.user_id
    if not await request.app[REPLIES].stop(StopTarget(owner, task_id=task_id)):
        raise NotFound(f"Task {task_id} not found")
    return web.json_response({"status": True, "message": f"Task {task_id} stopped."})


async def title_completion(request: web.Request) -> web.Response:
    """The web app's rename › generate (`generateTitle`): `{model, messages}` →
    an OpenAI completion whose message is `{"title": …}` as JSON text."""
    principal = await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object with 'model' and 'messages'")
    replies = request.app[REPLIES]
    title = await replies.suggest_title(principal, body.get("model"), body.get("messages"))
    content = json.dumps({"title": title}, ensure_ascii=False)
    message = {"role": "assistant", "content": content}
    return web.json_response(
        {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tasks", list_all)
    app.router.add_get("/api/tasks/chat/{chat_id}", list_chat)
    app.router.add_post("/api/tasks/chat/{chat_id}/stop", stop_chat)
    app.router.add_post("/api/tasks/stop/{task_id}", stop_task)
    app.router.add_post("/api/v1/tasks/title/completions", title_completion)
