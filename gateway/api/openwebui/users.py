"""Open WebUI's admin routes for users, `/api/v1/users/*` (docs/PROTOCOLS.md §1.2).

    DELETE /api/v1/users/{user_id}    admins only, never oneself → true

Removing a user takes their chats, assistants and keys with them, closes their
open connections on every replica (`gateway/access.py`) and refuses their
tokens from then on, JWTs included: the id is never made again just in time.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.common import principal_of
from gateway.application.keys import ACCOUNTS


async def delete_user(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    await request.app[ACCOUNTS].remove(principal, request.match_info["user_id"])
    return web.json_response(True)


def add_routes(app: web.Application) -> None:
    app.router.add_delete("/api/v1/users/{user_id}", delete_user)
