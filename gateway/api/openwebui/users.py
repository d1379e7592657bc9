"""Open WebUI's admin routes for users, `/api/v1/users/*` (docs/PROTOCOLS.md §1.2).

    DELETE /api/v1/users/{user_id}    admins only, never oneself nor the primary
                                      admin (the oldest admin account) → true
    GET  /api/v1/users/{user_id}/info {id, name}: any signed-in user (the shared
                                      page's sharer, by its shown id)
    POST /api/v1/users/update/role    {id, role}: admins only, never their own nor
                                      the primary admin's →
                                      the user (the admin panel's role switch;
                                      how a `pending` user is let in)

Removing a user takes their chats, assistants and keys with them, closes their
open connections on every replica (`gateway/access.py`) and refuses their
tokens from then on, JWTs included: the id is never made again just in time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import principal_of, read_json
from gateway.application.accounts import UserRecord
from gateway.application.keys import ACCOUNTS, CHATS
from gateway.errors import BadRequest, NotFound


async def delete_user(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    await request.app[ACCOUNTS].remove(principal, request.match_info["user_id"])
    return web.json_response(True)


async def user_info(request: web.Request) -> web.Response:
    """A user's name, as any signed-in user sees it (the shared page shows its
    sharer's, named by the id its snapshot is shown with: the name, not the id)."""
    await principal_of(request)
    user_id = request.match_info["user_id"]
    owner = await request.app[CHATS].sharer(user_id) or user_id
    user = await request.app[ACCOUNTS].profile(owner)
    if user is None:
        raise NotFound("User not found")
    return web.json_response({"id": user_id, "name": user.name})


async def update_role(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    body = await read_json(request)
    if not isinstance(body, Mapping) or not all(isinstance(body.get(k), str) for k in ROLE_KEYS):
        raise BadRequest("Body must be an object with 'id' and 'role' (strings)")
    user = await request.app[ACCOUNTS].set_role(principal, body["id"], body["role"])
    return web.json_response(user_view(user))


ROLE_KEYS = ("id", "role")


def user_view(user: UserRecord) -> dict[str, Any]:
    """Open WebUI's `UserModel`, without what is no one else's business."""
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "profile_image_url": user.profile_image_url,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def add_routes(app: web.Application) -> None:
    app.router.add_delete("/api/v1/users/{user_id}", delete_user)
    app.router.add_post("/api/v1/users/update/role", update_role)
    app.router.add_get("/api/v1/users/{user_id}/info", user_info)
