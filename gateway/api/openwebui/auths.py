"""Open WebUI's `/api/v1/auths/*`: sign-up, sign-in, session, API keys (docs/PROTOCOLS.md §1.2).

The session object::

    {"token", "token_type": "Bearer", "expires_at": <epoch s | null>, "id", "email",
     "name", "role", "profile_image_url", "permissions": {}}

Sign-in also sets an HttpOnly `token` cookie, as Open WebUI does, so the
web app's socket and REST calls authenticate the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.application.accounts import UserRecord
from gateway.application.keys import ACCOUNTS, AUTHENTICATOR, SETTINGS
from gateway.edge.auth import find_token
from gateway.edge.proxy import prefix
from gateway.errors import BadRequest, NotFound


def _session(request: web.Request, user: UserRecord) -> dict[str, Any]:
    """A new session: a token issued now (sign-in, sign-up)."""
    ttl = request.app[SETTINGS].jwt_expires_in_s
    token = request.app[AUTHENTICATOR].issue(user.id, ttl_s=ttl, name=user.name)
    return _session_of(user, token, int(time.time()) + ttl if ttl else None)


def _session_of(user: UserRecord, token: str, expires_at: int | None) -> dict[str, Any]:
    return {
        "token": token,
        "token_type": "Bearer",
        "expires_at": expires_at,
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "profile_image_url": user.profile_image_url,
        "permissions": {},
    }


def _cookie_path(request: web.Request) -> str:
    """Under a sub-path, the cookie is the gateway's alone, not the whole host's."""
    return prefix(request, request.app[SETTINGS].base_path) + "/"


def _with_cookie(request: web.Request, session: dict[str, Any]) -> web.Response:
    response = web.json_response(session)
    response.set_cookie(
        "token",
        session["token"],
        httponly=True,
        samesite="Lax",
        secure=request.secure,
        max_age=request.app[SETTINGS].jwt_expires_in_s,
        path=_cookie_path(request),
    )
    return response


def _credentials(body: Any) -> tuple[str, str]:
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object")
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise BadRequest("'email' and 'password' are required strings")
    return email, password


def _name(body: Mapping[str, Any]) -> str | None:
    return body.get("name") if isinstance(body.get("name"), str) else None


async def signin(request: web.Request) -> web.Response:
    email, password = _credentials(await read_json(request))
    user = await request.app[ACCOUNTS].sign_in(email, password, request.remote)
    return _with_cookie(request, _session(request, user))


async def signup(request: web.Request) -> web.Response:
    body = await read_json(request)
    email, password = _credentials(body)
    user = await request.app[ACCOUNTS].sign_up(email, password, _name(body))
    return _with_cookie(request, _session(request, user))


async def add(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    body = await read_json(request)
    email, password = _credentials(body)
    role = str(body.get("role") or "user")
    user = await request.app[ACCOUNTS].add(principal, email, password, _name(body), role)
    return web.json_response(_session(request, user))


async def current(request: web.Request) -> web.Response:
    """The caller's session, with the token it came with (as Open WebUI answers):
    never a new one, which would outlive a revoked API key or renew a JWT for ever."""
    token = find_token(request.headers, request.cookies)
    principal = await request.app[AUTHENTICATOR].authenticate(token, pending_too=True)
    user = await request.app[ACCOUNTS].user(principal)
    expires_at = principal.expires_at
    return web.json_response(
        _session_of(user, token or "", int(expires_at) if expires_at is not None else None)
    )


async def signout(request: web.Request) -> web.Response:
    response = web.json_response({"status": True})
    response.del_cookie("token", path=_cookie_path(request))
    return response


async def api_key(request: web.Request) -> web.Response:
    """A new key, shown this once; the caller's key before it stops working."""
    key = await request.app[ACCOUNTS].new_key(await principal_of(request))
    return web.json_response({"api_key": key})


async def get_api_key(request: web.Request) -> web.Response:
    """The caller's Open WebUI key, as far as it is kept: its id, hint and times
    (`api_key` is null: only a hash is stored, the key was shown at creation)."""
    keys = await request.app[ACCOUNTS].keys(await principal_of(request))
    mine = [key for key in keys if key.kind in ("openwebui", None)]
    if not mine:
        raise NotFound("API key not found")
    return web.json_response({"api_key": None, **mine[0].as_dict()})


async def list_api_keys(request: web.Request) -> web.Response:
    """The caller's keys of every kind (Open WebUI's and RAGFlow's), newest first."""
    keys = await request.app[ACCOUNTS].keys(await principal_of(request))
    return web.json_response([key.as_dict() for key in keys])


async def list_all_api_keys(request: web.Request) -> web.Response:
    """Everyone's keys (admins only)."""
    keys = await request.app[ACCOUNTS].all_keys(await principal_of(request))
    return web.json_response([key.as_dict() for key in keys])


async def revoke_api_key(request: web.Request) -> web.Response:
    """One key by its id: the caller's own (an admin's: anyone's); refused at once on
    every transport, its connections closed."""
    principal = await principal_of(request)
    await request.app[ACCOUNTS].revoke_key(principal, request.match_info["key_id"])
    return web.json_response(True)


async def delete_api_key(request: web.Request) -> web.Response:
    """Open WebUI's "delete my API key": the caller's sk- keys stop working at once,
    and connections opened with them are closed (RAGFlow tokens stay)."""
    await request.app[ACCOUNTS].revoke_keys(await principal_of(request), "openwebui")
    return web.json_response(True)


async def update_timezone(request: web.Request) -> web.Response:
    await principal_of(request)
    await read_json(request)
    return web.json_response({"status": True})


def add_routes(app: web.Application) -> None:
    prefix = "/api/v1/auths"
    app.router.add_get(f"{prefix}/", current)
    app.router.add_post(f"{prefix}/signin", signin)
    app.router.add_post(f"{prefix}/signup", signup)
    app.router.add_post(f"{prefix}/signout", signout)
    app.router.add_get(f"{prefix}/signout", signout)
    app.router.add_post(f"{prefix}/add", add)
    app.router.add_post(f"{prefix}/api_key", api_key)
    app.router.add_get(f"{prefix}/api_key", get_api_key)
    app.router.add_delete(f"{prefix}/api_key", delete_api_key)
    app.router.add_get(f"{prefix}/api_keys", list_api_keys)
    app.router.add_get(f"{prefix}/api_keys/all", list_all_api_keys)
    app.router.add_delete(f"{prefix}/api_keys/{{key_id}}", revoke_api_key)
    app.router.add_post(f"{prefix}/update/timezone", update_timezone)
