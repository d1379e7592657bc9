"""`gateway serve` serving an installed web app: files, cache headers, the SPA's
fallback, the gateway's own routes untouched; the JSON index where the app is not
served (not installed, under GATEWAY_BASE_PATH, behind a proxy's X-Forwarded-Prefix).

A small build of the same layout stands in for Open WebUI's (the real one is driven
in Chromium by tests/browser/)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.webui.layout import write_record
from tests.gatewayproc import GatewayProcess

INDEX = "<!doctype html><title>the app</title>"
FILES = {
    "index.html": INDEX,
    "_app/immutable/entry/start.abc123.js": "export {}",
    "_app/version.json": '{"version":"abc"}',
    "static/favicon.png": "png",
    "manifest.json": "{}",
}
IMMUTABLE = "public, max-age=31536000, immutable"


def lay_out(data_dir: Path, version: str = "0.12.4") -> None:
    """An installed web app, as `gateway webui install` leaves it."""
    frontend = data_dir / "webui" / version / "frontend"
    for name, text in FILES.items():
        (frontend / name).parent.mkdir(parents=True, exist_ok=True)
        (frontend / name).write_text(text)
    write_record(data_dir, {"version": version, "frontend": f"{version}/frontend"})


def get(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("webui-served")
    lay_out(data_dir)
    gateway = GatewayProcess(data_dir).start()
    yield gateway
    gateway.stop()


def test_the_app_at_the_root_never_cached(served: GatewayProcess) -> None:
    status, headers, body = get(served.url + "/")
    assert (status, body.decode()) == (200, INDEX)
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Type"].startswith("text/html")
    # Revalidated, not refetched.
    status, _, body = get(served.url + "/", headers={"If-None-Match": headers["Etag"]})
    assert (status, body) == (304, b"")
    status, headers, body = get(served.url + "/", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(INDEX)))
    assert "Open WebUI 0.12.4's web app at /" in served.log()


@pytest.mark.parametrize(
    ("path", "cache"),
    [
        ("/_app/immutable/entry/start.abc123.js", IMMUTABLE),
        ("/_app/version.json", "no-cache"),
        ("/manifest.json", "no-cache"),
        ("/static/favicon.png", "public, max-age=600"),
    ],
)
def test_files_and_their_cache_headers(served: GatewayProcess, path: str, cache: str) -> None:
    status, headers, body = get(served.url + path)
    assert (status, body.decode()) == (200, FILES[path[1:]])
    assert headers["Cache-Control"] == cache


@pytest.mark.parametrize(
    "path", ["/c/0b7e4c1c-4a0e-4f5e-9a57-1d1b7d4e7a11", "/auth", "/workspace/models"]
)
def test_the_apps_own_routes_get_its_page(served: GatewayProcess, path: str) -> None:
    status, headers, body = get(served.url + path + "?redirect=%2F")
    assert (status, body.decode(), headers["Cache-Control"]) == (200, INDEX, "no-cache")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/no-such-route",
        "/ollama/nothing",
        "/_app/immutable/missing.js",
        "/static/missing.png",
        "/favicon.ico",
        "/../installed.json",
        "/static/../../installed.json",
        "/%2e%2e/%2e%2e/installed.json",
    ],
)
def test_no_file_no_route_is_the_404_it_always_was(served: GatewayProcess, path: str) -> None:
    status, headers, body = get(served.url + path)
    assert status == 404
    assert headers["Content-Type"].startswith("application/json"), body
    assert "No route for GET" in json.loads(body)["detail"]


def test_the_gateways_routes_and_methods_are_untouched(served: GatewayProcess) -> None:
    status, _, body = get(served.url + "/health")
    assert (status, json.loads(body)) == (200, {"status": True})
    status, _, body = get(served.url + "/api/config")
    assert status == 200 and json.loads(body)["version"] == "0.12.4"
    # Writes are never the app's: an unknown one is the same 404 as without it.
    status, _, body = get(served.url + "/c/abc", method="POST")
    assert status == 404 and "No route for POST /c/abc" in json.loads(body)["detail"]
    status, _, body = get(served.url + "/api/v1/chats/", method="GET")
    assert status == 401


def test_behind_a_proxys_sub_path_the_index_says_why_not(served: GatewayProcess) -> None:
    status, _, body = get(served.url + "/", headers={"X-Forwarded-Prefix": "/chat"})
    index = json.loads(body)
    assert status == 200 and index["health"] == "/chat/health"
    assert "served only at the root of a host" in index["web_app"]
    status, _, _ = get(served.url + "/c/abc", headers={"X-Forwarded-Prefix": "/chat"})
    assert status == 404


def test_behind_the_shipped_sub_path_config_the_index_says_why_not(
    served: GatewayProcess, tmp_path: Path
) -> None:
    """nginx/gateway-subpath.conf as shipped: /chat/ is the JSON index, not a page that
    would ask for /_app/… and /api/… where nothing answers."""
    from tests.proxy.runners import start_nginx

    proxy = start_nginx(
        tmp_path / "nginx", "nginx/gateway-subpath.conf", [served.port], prefix="/chat"
    )
    try:
        status, headers, body = get(proxy.base + "/")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        index = json.loads(body)
        assert index["openwebui_socketio_path"] == "/chat/ws/socket.io"
        assert "served only at the root of a host" in index["web_app"]
        assert get(proxy.base + "/c/abc")[0] == 404
        # The same gateway, asked directly, serves the app.
        assert get(served.url + "/")[2].decode() == INDEX
    finally:
        proxy.stop()


def test_under_gateway_base_path_the_index_says_why_not(
    tmp_path: Path, start_gateway: Callable[..., GatewayProcess]
) -> None:
    lay_out(tmp_path / "data")
    gateway = start_gateway({"GATEWAY_BASE_PATH": "/chat"}, data_dir=tmp_path / "data")
    status, _, body = get(gateway.url + "/")
    assert status == 200 and "served only at the root of a host" in json.loads(body)["web_app"]
    assert get(gateway.url + "/c/abc")[0] == 404
    assert "not served under GATEWAY_BASE_PATH=/chat" in gateway.log()


def test_not_installed_the_index_says_how(gateway: GatewayProcess) -> None:
    status, _, body = get(gateway.url + "/")
    assert status == 200
    assert "`gateway webui install`" in json.loads(body)["web_app"]


def test_a_broken_install_is_logged_and_not_served(
    tmp_path: Path, start_gateway: Callable[..., GatewayProcess]
) -> None:
    data_dir = tmp_path / "data"
    lay_out(data_dir)
    (data_dir / "webui" / "0.12.4" / "frontend" / "index.html").unlink()
    gateway = start_gateway(data_dir=data_dir)
    status, _, body = get(gateway.url + "/")
    assert status == 200 and "not installed" in json.loads(body)["web_app"]
    assert "web app not served" in gateway.log() and "has no index.html" in gateway.log()


def test_a_link_in_the_build_that_leads_out_of_it_is_not_served(tmp_path: Path) -> None:
    from gateway.webui.serving import WebApp

    lay_out(tmp_path)
    frontend = tmp_path / "webui" / "0.12.4" / "frontend"
    (tmp_path / "secret.txt").write_text("outside the build")
    (frontend / "static" / "out.txt").symlink_to(tmp_path / "secret.txt")
    (frontend / "static" / "same.html").symlink_to(frontend / "index.html")
    app = WebApp.find(tmp_path)
    assert app is not None
    assert "static/same.html" in app.files and "index.html" in app.files
    assert "static/out.txt" not in app.files
