"""The installed web app, served by `gateway serve` at the root of its host.

    path                          what                                Cache-Control
    GET /                         index.html                          no-cache
    GET /_app/immutable/…         content-hashed files                public, max-age=31536000,
                                                                      immutable
    GET /_app/version.json        the build's id (the app polls it)   no-cache
    GET /static/…, /favicon.png…  other files of the build            public, max-age=600
    GET /c/<id>, /auth, …         a path of no route and no file: the SPA's own
                                  route, answered with index.html     no-cache

A middleware, innermost: a path any route of the gateway answers (`/api/…`, `/v1/…`,
`/ws/socket.io`, …) never reaches the files, and a path under those roots that
no route answers stays the flavour's own 404 (or 405), as without the app.  The
build's file names are listed once at start, so finding a file costs no disk
access, and a name not in the list is never opened (no path can climb out, nor
a link in the build lead out of it);
files go out with aiohttp's FileResponse (sendfile, or a thread: the event loop
never waits on the disk), with ETag and Last-Modified.

The app asks for its files and its API from the root of the host (it has no base
path setting), so behind a proxy's X-Forwarded-Prefix — and under
GATEWAY_BASE_PATH, where this middleware is not installed at all — `GET /` is
the JSON index, whose `web_app` line says why (`index_note`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.edge.proxy import prefix
from gateway.webui.layout import NotInstalled, installed

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
SHORT = "public, max-age=600"
# First path segments that belong to the gateway's routes (and Open WebUI's other
# backends): an unknown path under them is a 404 of its own, never the app's page.
_ROUTE_ROOTS = frozenset(
    {"api", "ws", "v1", "ragflow", "ollama", "openai", "health", "ready", "_app", "static"}
)
_NEVER_CACHED = frozenset({"index.html", "_app/version.json", "manifest.json"})


def _inside(path: Path, root: Path) -> bool:
    """A file of the build, a link to another file of it too; never one whose link
    leads out of the build (a build is unpacked from a wheel, which has no links:
    one there was put there after)."""
    if not path.is_file():
        return False
    return path.resolve().is_relative_to(root)


@dataclass(frozen=True)
class WebApp:
    """An installed build: its directory and the files in it (relative POSIX paths)."""

    version: str
    root: Path
    files: frozenset[str]

    @classmethod
    def find(cls, data_dir: Path) -> WebApp | None:
        """The app installed in the data dir; None (logged when broken) otherwise."""
        try:
            app = installed(data_dir)
        except NotInstalled as exc:
            if "not installed" not in str(exc):
                log.warning("web app not served: %s", exc)
            return None
        root = app.frontend.resolve()
        files = frozenset(
            path.relative_to(root).as_posix() for path in root.rglob("*") if _inside(path, root)
        )
        return cls(app.version, root, files)

    def response(self, relative: str) -> web.FileResponse:
        if relative.startswith("_app/immutable/"):
            cache = IMMUTABLE
        elif relative in _NEVER_CACHED:
            cache = NO_CACHE
        else:
            cache = SHORT
        return web.FileResponse(self.root / relative, headers={"Cache-Control": cache})

    def page(self) -> web.FileResponse:
        return self.response("index.html")

    def middleware(self) -> Any:
        app = self

        # Not a coroutine: a request for the gateway's own routes gets the handler's
        # awaitable as it is, and no frame of this is kept for its life (a socket's).
        @web.middleware
        def web_app(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
            if request.method not in ("GET", "HEAD") or prefix(request):
                # Writes are the API's; under a proxy's sub-path the app cannot work.
                return handler(request)
            path = request.path
            if path == "/":
                return _given(app.page())
            if not isinstance(request.match_info.http_exception, web.HTTPNotFound):
                return handler(request)  # a route of the gateway's
            relative = path[1:]
            if relative in app.files:
                return _given(app.response(relative))
            if _is_app_route(relative):
                return _given(app.page())
            return handler(request)  # the 404 it would be without the app

        return web_app


async def _given(response: web.StreamResponse) -> web.StreamResponse:
    return response


def _is_app_route(relative: str) -> bool:
    """Whether a path that is no file may be one of the SPA's routes (`c/<id>`,
    `auth`, `workspace/models`): not under a route root, not a file name."""
    segments = relative.split("/")
    if segments[0] in _ROUTE_ROOTS:
        return False
    return "." not in segments[-1]


WEB_APP: web.AppKey[WebApp | None] = web.AppKey("web_app")


def mount(app: web.Application, data_dir: Path, base_path: str) -> None:
    """The installed web app (if any) under `WEB_APP`, and its middleware appended,
    innermost, where it can be served: at the root of the host."""
    found = WebApp.find(data_dir)
    app[WEB_APP] = found
    if found is None:
        return
    if base_path:
        log.warning(
            "Open WebUI %s's web app is installed but not served under GATEWAY_BASE_PATH=%s: "
            "it works only at the root of a host",
            found.version,
            base_path,
        )
        return
    app.middlewares.append(found.middleware())
    log.info("serving Open WebUI %s's web app at / from %s", found.version, found.root)


def index_note(request: web.Request) -> str:
    """The JSON index's word on the web app (it is shown only where the app is not)."""
    app = request.app.get(WEB_APP)
    if app is None:
        return (
            "not installed: `gateway webui install` puts Open WebUI's web app in the data dir, "
            "then `gateway serve` serves it here"
        )
    return (
        f"Open WebUI {app.version}'s web app is installed but served only at the root of a "
        "host: it asks for /api/…, /_app/… and /ws/socket.io from the root (it has no "
        "base-path setting); give the gateway a host of its own (README, 'The web app')"
    )
