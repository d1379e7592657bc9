"""The small Open WebUI routes its web app calls around chats (docs/PROTOCOLS.md §1.2, §1.3).

GET  /api/config              what the app needs before it opens its socket; the
                              `token` cookie (or Bearer) decides which shape
GET  /api/version             {"version", "deployment_id"}: constant for the process's
                              life (the app reloads itself when it changes between
                              two socket connects)
GET  /api/changelog           the gateway's release notes, for the app's "What's New"
GET  /api/v1/users/user/settings          the user's stored settings ({"ui": {}})
POST /api/v1/users/user/settings/update   stores them and echoes them
GET  /api/v1/{tools,skills,functions,folders}/, /api/v1/folders/shared,
     /api/v1/configs/banners   []
POST /api/v1/folders/         400: no folders (the config says `enable_folders: false`)
GET  /api/v1/users/user/variables, POST .../variables/update   the user's prompt
                              variables ({"variables": {name: text}})
POST /api/v1/auths/update/profile   the user's own name and picture → the user
GET  /api/v1/auths/mfa/status  {"enabled": false, "required": false}: no second factor
POST /api/v1/users/user/info/update  {}: the browser's position, not kept
POST /api/chat/completed      older clients' end-of-reply call: the messages as stored
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.api.common import principal_of, read_json
from gateway.api.openwebui.users import user_view
from gateway.application.accounts import VARIABLES
from gateway.application.keys import ACCOUNTS, AUTHENTICATOR, CHATS, SETTINGS
from gateway.edge.auth import Principal, find_token
from gateway.errors import BadRequest, GatewayError
from gateway.flavours.openwebui import is_temporary_chat
from gateway.settings import Settings

# The Open WebUI release whose frontend and API this gateway speaks.  A
# constant, not the gateway's own version, so a restarted or upgraded
# gateway never makes open tabs reload.
OPENWEBUI_VERSION = "0.12.4"
# The name the web app shows.  Serving Open WebUI's frontend, its branding stays
# in the name, as Open WebUI's own backend keeps it beside a custom one (its
# licence asks that the branding not be removed).
APP_NAME = "Chat Gateway (Open WebUI)"

CHANGELOG = {
    __version__: {
        "date": "2026-12-05",
        "added": [
            {
                "title": "One chat core behind every client",
                "content": "This web app, RAGFlow and Nadoo clients and any OpenAI SDK read "
                "and write the same chats, over Socket.IO, WebSocket or SSE.",
            },
            {
                "title": "Titles, tags and follow-up questions",
                "content": "Each chat's title is written by the model, with tags and "
                "suggestions for what to ask next.",
            },
            {
                "title": "Scales out",
                "content": "Several replicas share Redis and PostgreSQL; a reply streams to "
                "every tab, on any replica.",
            },
        ],
    }
}


async def _principal_or_none(request: web.Request) -> Principal | None:
    try:
        token = find_token(request.headers, request.cookies)
        if not token:
            return None
        return await request.app[AUTHENTICATOR].authenticate(token, pending_too=True)
    except GatewayError:
        # An expired cookie must not break the sign-in page: answer as to a stranger.
        return None


def _features(settings: Settings, signed_in: bool) -> dict[str, Any]:
    features: dict[str, Any] = {
        "auth": True,
        "auth_trusted_header": False,
        "enable_signup": settings.enable_signup,
        "enable_signup_password_confirmation": False,
        "enable_ldap": False,
        "enable_login_form": True,
        "enable_websocket": settings.enable_websocket_support,
        "websocket_heartbeat_interval": 30,
    }
    if signed_in:
        features.update(
            {
                "enable_api_keys": True,
                "enable_direct_connections": False,
                # No folders to make (`POST /api/v1/folders/` says so): the app
                # hides them.
                "enable_folders": False,
                "enable_channels": False,
                "enable_notes": False,
                "enable_web_search": False,
                "enable_code_execution": False,
                "enable_code_interpreter": False,
                "enable_image_generation": False,
                "enable_autocomplete_generation": False,
                # The web app asks for these with each turn (`background_tasks`).
                "enable_title_generation": True,
                "enable_follow_up_generation": True,
                "enable_tags_generation": True,
                "enable_community_sharing": False,
                "enable_message_rating": False,
                "enable_memories": False,
                "enable_version_update_check": False,
                "enable_user_status": False,  # (no status to keep)
            }
        )
    return features


async def config(request: web.Request) -> web.Response:
    principal = await _principal_or_none(request)
    body: dict[str, Any] = {
        "status": True,
        "name": APP_NAME,
        "version": OPENWEBUI_VERSION,
        "default_locale": "en-US",
        "oauth": {"providers": {}},
        "features": _features(request.app[SETTINGS], principal is not None),
    }
    # Never "onboarding": the web app then insists on creating an admin.
    if principal is not None:
        body.update(
            {
                "default_models": "",
                "default_prompt_suggestions": [],
                "file": {"max_size": None, "max_count": None},
                "permissions": {},
                # Controls of what the gateway does not do, hidden (for users: the
                # app shows everything to admins): merging several models' replies,
                # the usage tab.
                "ui": {"visibility": {"chat.merge": False, "settings.usage": False}},
            }
        )
    return web.json_response(body)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OPENWEBUI_VERSION, "deployment_id": ""})


async def changelog(request: web.Request) -> web.Response:
    """What the web app's "What's New" shows an admin once per version: the gateway's
    own notes, in the shape its modal reads::

        {"<version>": {"date": "YYYY-MM-DD", "added": [{"title", "content"}, ...]}}
    """
    return web.json_response(CHANGELOG)


async def user_settings(request: web.Request) -> web.Response:
    user = await request.app[ACCOUNTS].user(await principal_of(request))
    settings = {key: value for key, value in user.settings.items() if key != VARIABLES}
    return web.json_response(settings or {"ui": {}})


async def update_user_settings(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object of settings")
    await request.app[ACCOUNTS].save_settings(principal, dict(body))
    return web.json_response(dict(body))


async def user_variables(request: web.Request) -> web.Response:
    variables = await request.app[ACCOUNTS].variables(await principal_of(request))
    return web.json_response({"variables": variables})


async def update_user_variables(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    body = await read_json(request)
    variables = body.get("variables") if isinstance(body, Mapping) else None
    saved = await request.app[ACCOUNTS].save_variables(principal, variables)
    return web.json_response({"variables": saved})


async def update_profile(request: web.Request) -> web.Response:
    """The user's own name and picture; the rest of the form (bio, gender, birth
    date) is not kept."""
    principal = await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object")
    user = await request.app[ACCOUNTS].update_profile(
        principal, body.get("name"), body.get("profile_image_url")
    )
    return web.json_response(user_view(user))


async def update_user_info(request: web.Request) -> web.Response:
    """The interface's "user location" toggle sends the browser's position: taken,
    and not kept (nothing here uses it, and a position is no one's business)."""
    await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object")
    return web.json_response({})


async def mfa_status(request: web.Request) -> web.Response:
    """No second factor here (SECURITY.md): none enabled, none required."""
    await principal_of(request)
    return web.json_response({"enabled": False, "required": False})


async def empty_list(request: web.Request) -> web.Response:
    await principal_of(request)
    return web.json_response([])


async def search(request: web.Request) -> web.Response:
    """Open WebUI 0.12's sidebar search (`GET /api/v1/search?q=&page=`), over chats."""
    principal = await principal_of(request)
    query = request.query.get("q", "")[:500]
    try:
        page = min(max(1, int(request.query.get("page", "1"))), 100_000)
    except ValueError:
        raise BadRequest("'page' must be an integer") from None
    return web.json_response(await request.app[CHATS].search(principal, query, page))


async def ollama_version(request: web.Request) -> web.Response:
    """The model picker asks; there is no Ollama API here (models come over OpenAI's),
    and Open WebUI answers this when its own is off."""
    await principal_of(request)
    return web.json_response({"version": False})


async def chat_completed(request: web.Request) -> web.Response:
    """Open WebUI ≤ 0.6 called this after each reply; answer with the chat's messages."""
    principal = await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object")
    chat_id = body.get("chat_id")
    if not isinstance(chat_id, str) or not chat_id or is_temporary_chat(chat_id):
        # An unsaved chat (`temporary:`/`local:`) has no owner to check and nothing
        # stored: as Open WebUI, the messages come back as sent.
        return web.json_response(dict(body))
    chats = request.app[CHATS]
    messages = await chats.current_path(await chats.owned(principal, chat_id))
    return web.json_response({**body, "messages": messages})


async def no_folders(request: web.Request) -> web.Response:
    await principal_of(request)
    raise BadRequest("Folders are not supported by the gateway (a chat's folder_id is kept)")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/config", config)
    r.add_get("/api/version", version)
    r.add_get("/api/changelog", changelog)
    r.add_get("/api/v1/users/user/settings", user_settings)
    r.add_post("/api/v1/users/user/settings/update", update_user_settings)
    r.add_get("/api/v1/users/user/variables", user_variables)
    r.add_post("/api/v1/users/user/variables/update", update_user_variables)
    r.add_post("/api/v1/users/user/info/update", update_user_info)
    r.add_post("/api/v1/auths/update/profile", update_profile)
    r.add_get("/api/v1/auths/mfa/status", mfa_status)
    for path in (
        "/api/v1/tools/",
        "/api/v1/skills/",
        "/api/v1/functions/",
        "/api/v1/folders/",
        "/api/v1/folders/shared",
        "/api/v1/groups/",
        "/api/v1/channels/",
        "/api/v1/configs/banners",
    ):
        r.add_get(path, empty_list)
    r.add_post("/api/v1/folders/", no_folders)
    r.add_get("/api/v1/search", search)
    r.add_get("/ollama/api/version", ollama_version)
    r.add_post("/api/chat/completed", chat_completed)
    r.add_post("/api/v1/chat/completed", chat_completed)
