"""Open WebUI's chat REST API, `/api/v1/chats/*` (docs/PROTOCOLS.md §1.2).

Errors are `{"detail": ...}`; "not found" and "not yours" are both 404.
Lists are paged 60 at a time with `?page=` (1-based; `[]` past the end,
everything when absent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import Handler, json_array, principal_of, read_json
from gateway.application.chats import ChatRecord, Chats
from gateway.application.keys import CHATS
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, NotFound


def _page(request: web.Request) -> int | None:
    raw = request.query.get("page")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest("'page' must be an integer") from None


async def _context(request: web.Request) -> tuple[Chats, Principal]:
    return request.app[CHATS], await principal_of(request)


def _name(body: Any, key: str = "name") -> str:
    if not isinstance(body, Mapping) or not isinstance(body.get(key), str) or not body[key].strip():
        raise BadRequest(f"'{key}' is required and must be a non-empty string")
    return str(body[key])


async def _items(request: web.Request, **filters: Any) -> web.Response:
    chats, principal = await _context(request)
    return web.json_response(await chats.items(principal, _page(request), **filters))


async def _responses(request: web.Request, **filters: Any) -> web.StreamResponse:
    chats, principal = await _context(request)
    return await json_array(request, chats.responses(principal, **filters))


async def _one(request: web.Request) -> tuple[Chats, Principal, ChatRecord]:
    chats, principal = await _context(request)
    return chats, principal, await chats.owned(principal, request.match_info["id"])


async def _respond(chats: Chats, chat: ChatRecord) -> web.Response:
    return web.json_response(await chats.response(chat))


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


async def all_chats(request: web.Request) -> web.StreamResponse:
    return await _responses(request, archived=None)


async def all_archived(request: web.Request) -> web.StreamResponse:
    return await _responses(request, archived=True)


async def by_folder(request: web.Request) -> web.StreamResponse:
    return await _responses(request, folder_id=request.match_info["fid"], archived=None)


async def by_folder_list(request: web.Request) -> web.Response:
    return await _items(request, folder_id=request.match_info["fid"], archived=None)


async def by_tag(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    body = await read_json(request)
    name = _name(body)
    skip = _page_bound(body, "skip") or 0
    limit = _page_bound(body, "limit")
    return web.json_response(await chats.tagged(principal, name, skip, limit))


# The largest `skip` or `limit` a page may name (what every database's OFFSET takes).
MAX_PAGE_BOUND = 2**31 - 1


def _page_bound(body: dict[str, Any], key: str) -> int | None:
    """An integer `key` of the body from 0 to MAX_PAGE_BOUND; None when it is absent or
    not an integer (the default, as before); BadRequest outside that range."""
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if not 0 <= value <= MAX_PAGE_BOUND:
        raise BadRequest(f"{key} must be an integer from 0 to {MAX_PAGE_BOUND}")
    return value


async def all_tags(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    return web.json_response(await chats.user_tags(principal))


# -- create ------------------------------------------------------------------
async def new_chat(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    return await _respond(chats, await chats.create(principal, await read_json(request)))


async def import_chat(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    body = await read_json(request)
    return await _respond(chats, await chats.create(principal, body, imported=True))


# -- one chat ----------------------------------------------------------------
async def get_chat(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    return await _respond(chats, chat)


async def update_chat(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    body = await read_json(request)
    return await _respond(chats, await chats.update(principal, request.match_info["id"], body))


async def delete_chat(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    return web.json_response(await chats.delete(chat))


def _for_all_chats(act: Callable[[Chats, Principal], Awaitable[object]]) -> Handler:
    """A route that does one thing to all the user's chats, and answers true."""

    async def handler(request: web.Request) -> web.Response:
        chats, principal = await _context(request)
        await act(chats, principal)
        return web.json_response(True)

    return handler


delete_all = _for_all_chats(Chats.delete_all)
archive_all = _for_all_chats(lambda chats, principal: chats.archive_all(principal, True))
unarchive_all = _for_all_chats(lambda chats, principal: chats.archive_all(principal, False))
unshare_all = _for_all_chats(Chats.unshare_all)
mark_all_read = _for_all_chats(Chats.mark_all_read)


async def upsert_message(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    body = await read_json(request)
    chat = await chats.upsert_message(
        principal, request.match_info["id"], request.match_info["mid"], body
    )
    return await _respond(chats, chat)


async def delete_message(request: web.Request) -> web.Response:
    """The web app's message deletion (`deleteChatMessageById`); the chat after it."""
    chats, principal = await _context(request)
    chat = await chats.delete_message(
        principal, request.match_info["id"], request.match_info["mid"]
    )
    return await _respond(chats, chat)


async def message_event(request: web.Request) -> web.Response:
    """Relay `{type, data}` to the owner's live connections (Open WebUI's message events)."""
    chats, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping) or not isinstance(body.get("type"), str):
        raise BadRequest("Body must be an object with a string 'type'")
    await chats.relay_message_event(chat, request.match_info["mid"], body["type"], body.get("data"))
    return web.json_response(True)


async def is_pinned(request: web.Request) -> web.Response:
    _, _, chat = await _one(request)
    return web.json_response(chat.pinned)


async def toggle_pin(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    return await _respond(chats, await chats.set_flags(chat, pinned=not chat.pinned))


async def toggle_archive(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    changes: dict[str, Any] = {"archived": not chat.archived}
    if changes["archived"]:
        changes["pinned"] = False  # as Open WebUI: archiving unpins
    return await _respond(chats, await chats.set_flags(chat, **changes))


async def share(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    return await _respond(chats, await chats.share(chat))


async def unshare(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    return web.json_response(await chats.unshare(chat))


async def shared_view(request: web.Request) -> web.Response:
    chats, _ = await _context(request)
    return await _respond(chats, await chats.shared(request.match_info["share_id"]))


async def clone(request: web.Request) -> web.Response:
    chats, principal, chat = await _one(request)
    body = await read_json(request) if request.can_read_body else {}
    title = (
        body.get("title")
        if isinstance(body, Mapping) and isinstance(body.get("title"), str)
        else None
    )
    return await _respond(chats, await chats.clone(principal, chat, title))


async def fork(request: web.Request) -> web.Response:
    """`{message_id}`: the conversation down to it (the current message when null).
    The id is the user's chat, or a share id (the shared page's "fork")."""
    chats, principal = await _context(request)
    chat_id = request.match_info["id"]
    try:
        chat = await chats.owned(principal, chat_id)
    except NotFound:
        chat = await chats.shared(chat_id)
    body = await read_json(request) if request.can_read_body else {}
    up_to = body.get("message_id") if isinstance(body, Mapping) else None
    if up_to is not None and not isinstance(up_to, str):
        raise BadRequest("'message_id' must be a string or null")
    up_to = up_to or chat.current_id
    if up_to is None:
        raise BadRequest("The chat has no message to fork from")
    return await _respond(chats, await chats.fork(principal, chat, up_to))


async def shared_list(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    query = request.query.get("query") or None  # (the modal's search box)
    return web.json_response(await chats.shared_items(principal, _page(request), query))


async def access_grants(request: web.Request) -> web.Response:
    """A share link is for anyone signed in: no grants to list…"""
    chats, principal = await _context(request)
    await chats.owned(principal, request.match_info["id"])
    return web.json_response([])


async def update_access_grants(request: web.Request) -> web.Response:
    """…nor to give."""
    chats, principal = await _context(request)
    await chats.owned(principal, request.match_info["id"])
    raise BadRequest("A share link is for anyone signed in: access cannot be limited here")


async def mark_unread(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    return web.json_response(await chats.mark_unread(principal, request.match_info["id"]))


async def archived_count(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    return web.json_response(await chats.archived_count(principal))


async def clone_shared(request: web.Request) -> web.Response:
    chats, principal = await _context(request)
    source = await chats.shared(request.match_info["id"])
    return await _respond(chats, await chats.clone(principal, source, None))


async def move_to_folder(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping) or not (
        body.get("folder_id") is None or isinstance(body.get("folder_id"), str)
    ):
        raise BadRequest("Body must be an object with 'folder_id' (a string or null)")
    return await _respond(chats, await chats.set_flags(chat, folder_id=body.get("folder_id")))


async def update_params(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object of model parameters")
    return await _respond(chats, await chats.set_params(chat, dict(body)))


async def chat_tags(request: web.Request) -> web.Response:
    chats, principal, chat = await _one(request)
    return web.json_response(await chats.chat_tags(principal, chat))


async def add_tag(request: web.Request) -> web.Response:
    chats, principal, chat = await _one(request)
    return web.json_response(await chats.tag(principal, chat, _name(await read_json(request))))


async def remove_tag(request: web.Request) -> web.Response:
    chats, principal, chat = await _one(request)
    return web.json_response(await chats.untag(principal, chat, _name(await read_json(request))))


async def clear_tags(request: web.Request) -> web.Response:
    chats, _, chat = await _one(request)
    await chats.clear_tags(chat)
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
    r.add_get(f"{p}/shared", shared_list)
    r.add_get(f"{p}/shared/{{id}}/access", access_grants)
    r.add_post(f"{p}/shared/{{id}}/access/update", update_access_grants)
    r.add_delete(f"{p}/share/all", unshare_all)
    r.add_get(f"{p}/share/{{share_id}}", shared_view)
    r.add_post(f"{p}/read", mark_all_read)
    r.add_get(f"{p}/archived/count", archived_count)
    r.add_post(f"{p}/tags", by_tag)
    r.add_get(f"{p}/folder/{{fid}}", by_folder)
    r.add_get(f"{p}/folder/{{fid}}/list", by_folder_list)
    r.add_get(f"{p}/{{id}}", get_chat)
    r.add_post(f"{p}/{{id}}", update_chat)
    r.add_delete(f"{p}/{{id}}", delete_chat)
    r.add_post(f"{p}/{{id}}/messages/{{mid}}", upsert_message)
    r.add_delete(f"{p}/{{id}}/messages/{{mid}}", delete_message)
    r.add_post(f"{p}/{{id}}/messages/{{mid}}/event", message_event)
    r.add_get(f"{p}/{{id}}/pinned", is_pinned)
    r.add_post(f"{p}/{{id}}/pin", toggle_pin)
    r.add_post(f"{p}/{{id}}/clone", clone)
    r.add_post(f"{p}/{{id}}/clone/shared", clone_shared)
    r.add_post(f"{p}/{{id}}/fork", fork)
    r.add_post(f"{p}/{{id}}/unread", mark_unread)
    r.add_post(f"{p}/{{id}}/archive", toggle_archive)
    r.add_post(f"{p}/{{id}}/share", share)
    r.add_delete(f"{p}/{{id}}/share", unshare)
    r.add_post(f"{p}/{{id}}/folder", move_to_folder)
    r.add_patch(f"{p}/{{id}}/params", update_params)
    r.add_get(f"{p}/{{id}}/tags", chat_tags)
    r.add_post(f"{p}/{{id}}/tags", add_tag)
    r.add_delete(f"{p}/{{id}}/tags", remove_tag)
    r.add_delete(f"{p}/{{id}}/tags/all", clear_tags)
