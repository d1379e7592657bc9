"""The pictures Open WebUI's web app shows (docs/PROTOCOLS.md §1.2)::

    GET /api/v1/users/{user_id}/profile/image        the user's picture
    GET /api/v1/models/model/profile/image?id=<model>  the model's picture

An uploaded picture (a data: URL, as Open WebUI keeps them) is sent as is, a
picture elsewhere (http(s)) is a redirect, anything else — no upload yet, the
`/user.png` default — a badge of initials (`flavours/avatars.py`).  Both need
a signed-in caller; an unknown user still gets a badge (the web app asks for
removed users' pictures in old chats).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.common import principal_of
from gateway.application.keys import ACCOUNTS, REPLIES
from gateway.flavours.avatars import SVG, avatar_svg, data_url_image

# Pictures change rarely; a day of caching keeps a chat list from asking again.
CACHE = "private, max-age=86400"


def _picture(body: bytes, content_type: str) -> web.Response:
    # A picture, never a page: no script runs in it, its type is not guessed.
    headers = {"Cache-Control": CACHE, **PICTURE_HEADERS}
    return web.Response(body=body, content_type=content_type, headers=headers)


PICTURE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
}


async def user_image(request: web.Request) -> web.StreamResponse:
    await principal_of(request)
    user_id = request.match_info["user_id"]
    user = await request.app[ACCOUNTS].profile(user_id)
    url = user.profile_image_url if user is not None else ""
    if url.startswith(("http://", "https://")):
        raise web.HTTPFound(url)
    uploaded = data_url_image(url)
    if uploaded is not None:
        return _picture(uploaded[1], uploaded[0])
    return _picture(avatar_svg(user.name if user is not None else "", user_id), SVG)


async def model_image(request: web.Request) -> web.Response:
    await principal_of(request)
    model_id = request.query.get("id", "")
    models = {model.id: model for model in await request.app[REPLIES].models()}
    model = models.get(model_id)
    return _picture(avatar_svg(model.name if model is not None else model_id, model_id), SVG)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/users/{user_id}/profile/image", user_image)
    app.router.add_get("/api/v1/models/model/profile/image", model_image)
