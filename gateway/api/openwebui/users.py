"""Open WebUI's admin routes for users, `/api/v1/users/*` (docs/PROTOCOLS.md §1.2).

    DELETE /api/v1/users/{user_id}    admins only, never oneself → true

Removing a user takes their chats, assistants and keys with them, closes their
open connections on every replica (`gateway/access.py`) and refuses their
tokens from then on, JWTs included: the id is never made again just in time.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.common import principal_of
from gateway.application.accounts import remove_user
from gateway.context import gateway_of
from gateway.errors import Forbidden, NotFound


async def delete_user(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    principal = await principal_of(request)
    if not principal.is_admin:
        raise Forbidden("Only admins can remove users")
    user_id = request.match_info["user_id"]
    if user_id == principal.user_id:
        # Open WebUI refuses this too: an admin would lock themselves out.
        raise Forbidden("You cannot remove yourself")
    revocations = await remove_user(gateway.store, user_id)
    if not revocations:
        raise NotFound("User not found")
    for revocation in revocations:
        await gateway.access.revoked(revocation)
    return web.json_response(True)


def add_routes(app: web.Application) -> None:
    app.router.add_delete("/api/v1/users/{user_id}", delete_user)
