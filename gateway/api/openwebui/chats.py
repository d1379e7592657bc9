"""Open WebUI's chat REST API, `/api/v1/chats/*` (docs/PROTOCOLS.md §1.2).

Errors are `{"detail": ...}`; "not found" and "not yours" are both 404.
Lists are paged 60 at a time with `?page=` (1-based; `[]` past the end,
everything when absent).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.chat.chats import page_bounds
from gateway.chat.running import StopTarget
from gateway.chat.shapes import list_item
from gateway.context import Gateway, gateway_of
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, NotFound
from gateway.events import MessageEvent


def _page(request: web.Request) -> int | None:
    raw = request.query.get("page")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest("'page' must be an integer") from None


async def _context(request: web.Request) -> tuple[Gateway, Principal]:
    gateway = gateway_of(request)
    return gateway, await principal_of(request)


def _name(body: Any, key: str = "name") -> str:
    if not isinstance(body, Mapping) or not isinstance(body.get(key), str) or not body[key].strip():
        raise BadRequest(f"'{key}' is required and must be a non-empty string")
    return str(body[key])


async def _items(request: web.Request, **filters: Any) -> web.Response:
    gateway, principal = await _context(request)
    skip, limit = page_bounds(_page(request))
    chats = await gateway.store.list_chats(principal.user_id, skip=skip, limit=limit, **filters)
    return web.json_response([list_item(chat) for chat in chats])


async def _responses(request: web.Request, **filters: Any) -> web.Response:
    gateway, principal = await _context(request)
    chats = await gateway.store.list_chats(principal.user_id, **filters)
    return web.json_response([await gateway.service.book.response(chat) for chat in chats])


async def _one(request: web.Request) -> tuple[Gateway, Principal, Any]:
    gateway, principal = await _context(request)
    chat = await gateway.service.book.owned(principal, request.match_info["id"])
    return gateway, principal, chat


async def _respond(gateway: Gateway, chat: Any) -> web.Response:
    return web.json_response(await gateway.service.book.response(chat))


# -- lists -------------------------------------------------------------------
async def list_chats(request: web.Request) -> web.Response:
    return await _items(request)


async def search(request: web.Request) -> web.Response:
    # Open WebUI's search box understands "tag:<name>" words.
    words = request.query.get("text", "").split()
    tags = [w.removeprefix("tag:") for w in words if w.startswith("tag:")]
    text = " ".join(w for w in words if not w.startswith("tag:"))
    filters: dict[str, Any] = {"text": text or None, "archived": None}
    if tags:
        filters["tag"] = tags[0]
    return await _items(request, **filters)


async def pinned(request: web.Request) -> web.Response:
    return await _items(request, pinned=True)


async def archived(request: web.Request) -> web.Response:
    return await _items(request, archived=True)


async def all_chats(request: web.Request) -> web.Response:
    return await _responses(request, archived=None)


async def all_archived(request: web.Request) -> web.Response:
    return await _responses(request, archived=True)


async def by_folder(request: web.Request) -> web.Response:
    return await _responses(request, folder_id=request.match_info["fid"], archived=None)


async def by_folder_list(request: web.Request) -> web.Response:
    return await _items(request, folder_id=request.match_info["fid"], archived=None)


async def by_tag(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    body = await read_json(request)
    name = _name(body)
    skip = body.get("skip", 0) if isinstance(body.get("skip"), int) else 0
    limit = body.get("limit") if isinstance(body.get("limit"), int) else None
    chats = await gateway.store.list_chats(
        principal.user_id, tag=name, archived=None, skip=skip, limit=limit
    )
    return web.json_response([list_item(chat) for chat in chats])


async def all_tags(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    tags = await gateway.store.user_tags(principal.user_id)
    return web.json_response(_tag_objects(principal, tags))


def _tag_objects(principal: Principal, tags: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": tid, "name": name, "user_id": principal.user_id, "meta": None} for tid, name in tags
    ]


# -- create ------------------------------------------------------------------
async def new_chat(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    chat = await gateway.service.book.create(principal, await read_json(request))
    return await _respond(gateway, chat)


async def import_chat(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    chat = await gateway.service.book.create(principal, await read_json(request), imported=True)
    return await _respond(gateway, chat)


# -- one chat ----------------------------------------------------------------
async def get_chat(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    return await _respond(gateway, chat)


async def update_chat(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    body = await read_json(request)
    chat = await gateway.service.book.update(principal, request.match_info["id"], body)
    return await _respond(gateway, chat)


async def delete_chat(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    await gateway.service.replies.stop(StopTarget(chat.user_id, chat_id=chat.id))
    return web.json_response(await gateway.store.delete_chat(chat.id))


async def delete_all(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    await gateway.service.replies.stop(StopTarget(principal.user_id))
    await gateway.store.delete_user_chats(principal.user_id)
    return web.json_response(True)


async def upsert_message(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    body = await read_json(request)
    chat = await gateway.service.book.upsert_message(
        principal, request.match_info["id"], request.match_info["mid"], body
    )
    return await _respond(gateway, chat)


async def message_event(request: web.Request) -> web.Response:
    """Relay `{type, data}` to the owner's live connections (Open WebUI's message events)."""
    gateway, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping) or not isinstance(body.get("type"), str):
        raise BadRequest("Body must be an object with a string 'type'")
    message_id = request.match_info["mid"]
    if await gateway.store.get_message(chat.id, message_id) is None:
        raise NotFound("Message not found")
    event = MessageEvent(chat.id, message_id, 0, body["type"], body.get("data"))
    gateway.hub.publish([f"user:{chat.user_id}", f"chat:{chat.id}"], event)
    return web.json_response(True)


async def is_pinned(request: web.Request) -> web.Response:
    _, _, chat = await _one(request)
    return web.json_response(chat.pinned)


async def toggle_pin(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    return await _respond(
        gateway, await gateway.service.book.set_flags(chat, pinned=not chat.pinned)
    )


async def toggle_archive(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    changes: dict[str, Any] = {"archived": not chat.archived}
    if changes["archived"]:
        changes["pinned"] = False  # as Open WebUI: archiving unpins
    return await _respond(gateway, await gateway.service.book.set_flags(chat, **changes))


async def archive_all(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    await gateway.store.set_archived_all(principal.user_id, True)
    return web.json_response(True)


async def unarchive_all(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    await gateway.store.set_archived_all(principal.user_id, False)
    return web.json_response(True)


async def share(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    if chat.share_id is None:
        chat = await gateway.service.book.set_flags(chat, share_id=str(uuid.uuid4()))
    return await _respond(gateway, chat)


async def unshare(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    if chat.share_id is None:
        return web.json_response(False)
    await gateway.service.book.set_flags(chat, share_id=None)
    return web.json_response(True)


async def shared_view(request: web.Request) -> web.Response:
    gateway, _ = await _context(request)
    chat = await gateway.service.book.shared(request.match_info["share_id"])
    return await _respond(gateway, chat)


async def clone(request: web.Request) -> web.Response:
    gateway, principal, chat = await _one(request)
    body = await read_json(request) if request.can_read_body else {}
    title = (
        body.get("title")
        if isinstance(body, Mapping) and isinstance(body.get("title"), str)
        else None
    )
    return await _respond(gateway, await gateway.service.book.clone(principal, chat, title))


async def clone_shared(request: web.Request) -> web.Response:
    gateway, principal = await _context(request)
    source = await gateway.service.book.shared(request.match_info["id"])
    return await _respond(gateway, await gateway.service.book.clone(principal, source, None))


async def move_to_folder(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping) or not (
        body.get("folder_id") is None or isinstance(body.get("folder_id"), str)
    ):
        raise BadRequest("Body must be an object with 'folder_id' (a string or null)")
    return await _respond(
        gateway, await gateway.service.book.set_flags(chat, folder_id=body.get("folder_id"))
    )


async def update_params(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object of model parameters")
    params = chat.extra.get("params") if isinstance(chat.extra.get("params"), dict) else {}
    extra = {**chat.extra, "params": {**params, **body}}
    return await _respond(gateway, await gateway.service.book.set_flags(chat, extra=extra))


async def chat_tags(request: web.Request) -> web.Response:
    gateway, principal, chat = await _one(request)
    return web.json_response(_tag_objects(principal, await gateway.store.chat_tags(chat.id)))


async def add_tag(request: web.Request) -> web.Response:
    gateway, principal, chat = await _one(request)
    await gateway.store.add_tag(principal.user_id, chat.id, _name(await read_json(request)))
    return web.json_response(_tag_objects(principal, await gateway.store.chat_tags(chat.id)))


async def remove_tag(request: web.Request) -> web.Response:
    gateway, principal, chat = await _one(request)
    await gateway.store.remove_tag(principal.user_id, chat.id, _name(await read_json(request)))
    return web.json_response(_tag_objects(principal, await gateway.store.chat_tags(chat.id)))


async def clear_tags(request: web.Request) -> web.Response:
    gateway, _, chat = await _one(request)
    await gateway.store.clear_chat_tags(chat.id)
    return web.json_response(True)


def add_routes(app: web.Application) -> None:
    p = "/api/v1/chats"
    r = app.router
    # Fixed paths first: aiohttp matches in order, and "/{id}" would take them.
    r.add_get(f"{p}/", list_chats)
    r.add_get(f"{p}/list", list_chats)
    r.add_post(f"{p}/new", new_chat)
    r.add_post(f"{p}/import", import_chat)
    r.add_get(f"{p}/search", search)
    r.add_get(f"{p}/pinned", pinned)
    r.add_get(f"{p}/all", all_chats)
    r.add_get(f"{p}/all/archived", all_archived)
    r.add_get(f"{p}/all/tags", all_tags)
    r.add_get(f"{p}/archived", archived)
    r.add_post(f"{p}/archive/all", archive_all)
    r.add_post(f"{p}/unarchive/all", unarchive_all)
    r.add_delete(f"{p}/", delete_all)
    r.add_get(f"{p}/share/{{share_id}}", shared_view)
    r.add_post(f"{p}/tags", by_tag)
    r.add_get(f"{p}/folder/{{fid}}", by_folder)
    r.add_get(f"{p}/folder/{{fid}}/list", by_folder_list)
    r.add_get(f"{p}/{{id}}", get_chat)
    r.add_post(f"{p}/{{id}}", update_chat)
    r.add_delete(f"{p}/{{id}}", delete_chat)
    r.add_post(f"{p}/{{id}}/messages/{{mid}}", upsert_message)
    r.add_post(f"{p}/{{id}}/messages/{{mid}}/event", message_event)
    r.add_get(f"{p}/{{id}}/pinned", is_pinned)
    r.add_post(f"{p}/{{id}}/pin", toggle_pin)
    r.add_post(f"{p}/{{id}}/clone", clone)
    r.add_post(f"{p}/{{id}}/clone/shared", clone_shared)
    r.add_post(f"{p}/{{id}}/archive", toggle_archive)
    r.add_post(f"{p}/{{id}}/share", share)
    r.add_delete(f"{p}/{{id}}/share", unshare)
    r.add_post(f"{p}/{{id}}/folder", move_to_folder)
    r.add_patch(f"{p}/{{id}}/params", update_params)
    r.add_get(f"{p}/{{id}}/tags", chat_tags)
    r.add_post(f"{p}/{{id}}/tags", add_tag)
    r.add_delete(f"{p}/{{id}}/tags", remove_tag)
    r.add_delete(f"{p}/{{id}}/tags/all", clear_tags)
