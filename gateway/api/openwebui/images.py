"""The pictures Open WebUI's web app shows (docs/PROTOCOLS.md §1.2)::

    GET /api/v1/users/{user_id}/profile/image        the user's picture
    GET /api/v1/models/model/profile/image?id=<model>  the model's picture

An uploaded picture (a data: URL, as Open WebUI keeps them) is sent as is, a
picture elsewhere (http(s)) is a redirect, anything else — no upload yet, the
`/user.png` default — a badge of initials (`flavours/avatars.py`).  Both need
a signed-in caller; an unknown user still gets a badge (the web app asks for
removed users' pictures in old chats).

An uploaded picture is decoded once, not at every request (`Pictures`: a
1 MiB one cost 6 ms of the loop a request, which any signed-in user could ask
for again and again), and every picture carries an `ETag`: a browser that has
it gets 304 and no body.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from gateway import offloop
from gateway.api.common import principal_of
from gateway.application.keys import ACCOUNTS, REPLIES
from gateway.flavours.avatars import SVG, avatar_svg, data_url_image

# Pictures change rarely; a day of caching keeps a chat list from asking again.
CACHE = "private, max-age=86400"

# Decoded pictures kept, their data: URLs counted with them (an entry is checked
# against the stored URL at each request); the least recently asked for go first.
MAX_CACHED_BYTES = 32 * 1024 * 1024
# A data: URL longer than this is decoded in the off-loop thread.
OFF_LOOP_CHARS = 256 * 1024


@dataclass(frozen=True, slots=True)
class Picture:
    url: str  # the data: URL it was decoded from
    content_type: str
    body: bytes
    etag: str


def _etag(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


class Pictures:
    """Users' uploaded pictures, decoded once: by user id, each valid while the
    user's stored data: URL is the same (compared whole: a 1 MiB comparison is
    about 50 µs, its decoding 4 ms), at most MAX_CACHED_BYTES of them."""

    def __init__(self, max_bytes: int = MAX_CACHED_BYTES) -> None:
        self._entries: OrderedDict[str, Picture] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    async def get(self, user_id: str, url: str) -> Picture | None:
        """The picture `url` holds (None if it holds none)."""
        kept = self._entries.get(user_id)
        if kept is not None and kept.url == url:
            self._entries.move_to_end(user_id)
            return kept
        decoded = await offloop.run_if(len(url) > OFF_LOOP_CHARS, data_url_image, url)
        if decoded is None:
            return None
        picture = Picture(url, decoded[0], decoded[1], _etag(decoded[1]))
        self._put(user_id, picture)
        return picture

    def _put(self, user_id: str, picture: Picture) -> None:
        old = self._entries.pop(user_id, None)
        if old is not None:
            self._bytes -= _size(old)
        if _size(picture) > self._max_bytes:
            return
        self._entries[user_id] = picture
        self._bytes += _size(picture)
        while self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= _size(dropped)


# What an entry holds besides its URL and picture (the object, its ETag, the key,
# the dict's node): counted, or many small pictures would hold three times the bound.
ENTRY_OVERHEAD = 512


def _size(picture: Picture) -> int:
    return len(picture.url) + len(picture.body) + ENTRY_OVERHEAD


def _picture(
    request: web.Request, body: bytes, content_type: str, etag: str | None = None
) -> web.Response:
    # A picture, never a page: no script runs in it, its type is not guessed.
    etag = etag or _etag(body)
    headers = {"Cache-Control": CACHE, "ETag": etag, **PICTURE_HEADERS}
    if _matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag` (weakly, as RFC 9110 compares for it)."""
    if not if_none_match:
        return False
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", etag) for tag in tags)


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
    uploaded = await request.app[PICTURES].get(user_id, url) if url else None
    if uploaded is not None:
        return _picture(request, uploaded.body, uploaded.content_type, uploaded.etag)
    return _picture(request, avatar_svg(user.name if user is not None else "", user_id), SVG)


async def model_image(request: web.Request) -> web.Response:
    await principal_of(request)
    model_id = request.query.get("id", "")
    models = {model.id: model for model in await request.app[REPLIES].models()}
    model = models.get(model_id)
    return _picture(
        request, avatar_svg(model.name if model is not None else model_id, model_id), SVG
    )


PICTURES = web.AppKey("pictures", Pictures)


def add_routes(app: web.Application) -> None:
    app[PICTURES] = Pictures()
    app.router.add_get("/api/v1/users/{user_id}/profile/image", user_image)
    app.router.add_get("/api/v1/models/model/profile/image", model_image)
