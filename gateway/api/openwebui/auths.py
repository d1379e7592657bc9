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
from gateway.application.accounts import (
    SIGNUP_DISABLED,
    add_user,
    create_api_key,
    revoke_api_keys,
    sign_in,
)
from gateway.context import Gateway, gateway_of
from gateway.edge.proxy import prefix
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.store import UserRecord


def _session(gateway: Gateway, user: UserRecord, token: str | None = None) -> dict[str, Any]:
    ttl = gateway.settings.jwt_expires_in_s
    if token is None:
        token = gateway.authenticator.issue(user.id, ttl_s=ttl, name=user.name)
    return {
        "token": token,
        "token_type": "Bearer",
        "expires_at": int(time.time()) + ttl if ttl else None,
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "profile_image_url": user.profile_image_url,
        "permissions": {},
    }


def _cookie_path(gateway: Gateway, request: web.Request) -> str:
    """Under a sub-path, the cookie is the gateway's alone, not the whole host's."""
    return prefix(request, gateway.settings.base_path) + "/"


def _with_cookie(gateway: Gateway, request: web.Request, session: dict[str, Any]) -> web.Response:
    response = web.json_response(session)
    response.set_cookie(
        "token",
        session["token"],
        httponly=True,
        samesite="Lax",
        secure=request.secure,
        max_age=gateway.settings.jwt_expires_in_s,
        path=_cookie_path(gateway, request),
    )
    return response


def _credentials(body: Any) -> tuple[str, str]:
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be an object")
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise BadRequest("'email' and 'password' are required strings")
    return email, password


async def signin(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    email, password = _credentials(await read_json(request))
    # Refused (429) before any hashing when the account or the address failed too often.
    attempt = gateway.signin_throttle.admit(email, request.remote)
    try:
        user = await sign_in(gateway.store, gateway.passwords, email, password)
    except BaseException:
        attempt.abandoned()
        raise
    if user is None:
        attempt.failed()
        # Open WebUI answers 400 here, not 401.
        raise BadRequest("The email or password provided is incorrect.")
    attempt.succeeded()
    return _with_cookie(gateway, request, _session(gateway, user))


async def signup(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    body = await read_json(request)
    email, password = _credentials(body)
    only_first = not gateway.settings.enable_signup
    # Refused before hashing when it surely would be; the store decides for real.
    if only_first and await gateway.store.count_users() > 0:
        raise Forbidden(SIGNUP_DISABLED)
    name = body.get("name") if isinstance(body.get("name"), str) else None
    user = await add_user(
        gateway.store,
        gateway.passwords,
        email=email,
        password=password,
        name=name,
        only_first=only_first,
    )
    return _with_cookie(gateway, request, _session(gateway, user))


async def add(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    if not principal.is_admin:
        raise Forbidden("Only admins can add users")
    body = await read_json(request)
    email, password = _credentials(body)
    role = body.get("role") or "user"
    name = body.get("name") if isinstance(body.get("name"), str) else None
    user = await add_user(
        gateway.store, gateway.passwords, email=email, password=password, name=name, role=str(role)
    )
    return web.json_response(_session(gateway, user))


async def current(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    user = await gateway.store.get_user(principal.user_id)
    if user is None:
        raise NotFound("User not found")
    return web.json_response(_session(gateway, user))


async def signout(request: web.Request) -> web.Response:
    response = web.json_response({"status": True})
    response.del_cookie("token", path=_cookie_path(gateway_of(request), request))
    return response


async def api_key(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    return web.json_response({"api_key": await create_api_key(gateway.store, principal.user_id)})


async def delete_api_key(request: web.Request) -> web.Response:
    """Open WebUI's "delete my API key": the caller's sk- keys stop working at once,
    and connections opened with them are closed (RAGFlow tokens stay)."""
    gateway = gateway_of(request)
    principal = await principal_of(request)
    for revocation in await revoke_api_keys(gateway.store, principal.user_id, "openwebui"):
        await gateway.access.revoked(revocation)
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
    app.router.add_delete(f"{prefix}/api_key", delete_api_key)
    app.router.add_post(f"{prefix}/update/timezone", update_timezone)
