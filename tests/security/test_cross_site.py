"""Cross-site requests (issue 13, hole 5): a page on another site posts to the gateway
with the victim's `token` cookie, as a form or `fetch(..., {mode: "no-cors"})` can
(`text/plain`, no preflight).  Each write is refused with 403 and nothing happens;
the same request from an allowed origin, or with a bearer header, still works; a JSON
body must say `application/json`; credentials are granted only to listed origins.

SECURITY.md, section "Cross-site requests", says what the gateway decides and why.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

EVIL = "http://evil.example"
GOOD = "https://good.example"


@pytest.fixture(scope="module")
def open_gateway(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The default CORS_ALLOW_ORIGIN (`*`), as in the report."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("cross-site"), {"OPENAI_API_BASE_URL": fake_upstream.url}
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def listed_gateway(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(
        tmp_path_factory.mktemp("cross-site-listed"),
        {"OPENAI_API_BASE_URL": fake_upstream.url, "CORS_ALLOW_ORIGIN": GOOD},
    ).start()
    yield proc
    proc.stop()


def victim() -> tuple[str, str]:
    user_id = f"victim-{uuid.uuid4().hex[:8]}"
    return user_id, make_token(user_id, name="Victim")


async def send(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    path: str,
    body: Any,
    *,
    token: str,
    by: str = "cookie",
    headers: dict[str, str] | None = None,
    content_type: str = "text/plain;charset=UTF-8",
) -> tuple[int, str, aiohttp.ClientResponse]:
    """A POST as a browser page would send it: the token as the cookie (or a header)."""
    sent = {"Content-Type": content_type, **(headers or {})}
    if by == "cookie":
        sent["Cookie"] = f"token={token}"
    else:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.post(gw.url + path, data=data, headers=sent) as resp:
        return resp.status, await resp.text(), resp


async def chats_of(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> list[Any]:
    """Every chat of the user, archived or not (with the bearer header: no origin question)."""
    listed: list[Any] = []
    for path in ("/api/v1/chats/?page=1", "/api/v1/chats/archived"):
        async with http.get(gw.url + path, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            listed += [{**chat, "listed_in": path} for chat in await resp.json()]
    return listed


def api_keys_of(gw: GatewayProcess, user_id: str) -> int:
    with sqlite3.connect(gw.data_dir / "gateway.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM api_keys WHERE user_id = ?", (user_id,)).fetchone()
    return int(count)


def new_chat_body(title: str) -> dict[str, Any]:
    return {"chat": {"title": title, "history": {"currentId": None, "messages": {}}}}


def completion_body(marker: str) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": marker}]}


# -- the attack, on each route of the report --------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", "application/json"])
async def test_cross_site_new_chat_is_refused(open_gateway: GatewayProcess, content_type: str) -> None:
    _, token = victim()
    title = f"planted-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        status, text, resp = await send(
            http,
            open_gateway,
            "/api/v1/chats/new",
            new_chat_body(title),
            token=token,
            headers={"Origin": EVIL},
            content_type=content_type,
        )
        assert status == 403, text
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert [c for c in await chats_of(http, open_gateway, token) if c["title"] == title] == []


async def test_cross_site_archive_all_is_refused(open_gateway: GatewayProcess) -> None:
    _, token = victim()
    async with aiohttp.ClientSession() as http:
        status, text, _ = await send(
            http,
            open_gateway,
            "/api/v1/chats/new",
            new_chat_body("keep me"),
            token=token,
            by="bearer",
            content_type="application/json",
        )
        assert status == 200, text
        status, text, _ = await send(
            http, open_gateway, "/api/v1/chats/archive/all", "", token=token, headers={"Origin": EVIL}
        )
        assert status == 403, text
        chats = await chats_of(http, open_gateway, token)
        assert [c["listed_in"] for c in chats] == ["/api/v1/chats/?page=1"]


async def test_cross_site_api_key_is_refused(open_gateway: GatewayProcess) -> None:
    user_id, token = victim()
    async with aiohttp.ClientSession() as http:
        # The user exists (a first request made it), with no key.
        assert await chats_of(http, open_gateway, token) == []
        status, text, _ = await send(
            http, open_gateway, "/api/v1/auths/api_key", "", token=token, headers={"Origin": EVIL}
        )
        assert status == 403, text
        assert "sk-" not in text
    assert api_keys_of(open_gateway, user_id) == 0


@pytest.mark.parametrize("path", ["/api/chat/completions", "/api/v1/chat/completions"])
async def test_cross_site_completion_is_refused(
    open_gateway: GatewayProcess, fake_upstream: FakeUpstream, path: str
) -> None:
    _, token = victim()
    marker = f"spend-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        status, text, _ = await send(
            http, open_gateway, path, completion_body(marker), token=token, headers={"Origin": EVIL}
        )
    assert status == 403, text
    assert fake_upstream.requests_for(marker) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "null"},  # a sandboxed iframe, a data: URL
        {"Sec-Fetch-Site": "cross-site"},  # a browser that left Origin out
        {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.127.0.0.1.example"},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_other_cross_site_shapes_are_refused(
    open_gateway: GatewayProcess, headers: dict[str, str]
) -> None:
    _, token = victim()
    title = f"planted-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        status, text, _ = await send(
            http,
            open_gateway,
            "/api/v1/chats/new",
            new_chat_body(title),
            token=token,
            headers=headers,
            content_type="application/json",
        )
        assert status == 403, text
        assert "cross-site" in text.lower()
        assert [c for c in await chats_of(http, open_gateway, token) if c["title"] == title] == []


# -- what still works --------------------------------------------------------------------
async def test_same_origin_page_with_the_cookie_works(open_gateway: GatewayProcess) -> None:
    _, token = victim()
    own = open_gateway.url  # http://127.0.0.1:<port>: the gateway's own page
    async with aiohttp.ClientSession() as http:
        for extra in ({"Origin": own}, {"Origin": own, "Sec-Fetch-Site": "same-origin"}):
            title = f"mine-{uuid.uuid4().hex[:6]}"
            status, text, _ = await send(
                http,
                open_gateway,
                "/api/v1/chats/new",
                new_chat_body(title),
                token=token,
                headers=extra,
                content_type="application/json; charset=utf-8",
            )
            assert status == 200, text
            assert [c["title"] for c in await chats_of(http, open_gateway, token) if c["title"] == title]


async def test_cookie_without_origin_is_not_a_browser_page_and_works(
    open_gateway: GatewayProcess,
) -> None:
    """No Origin and no Sec-Fetch-Site: a script or SDK with a cookie jar, not a page."""
    user_id, token = victim()
    async with aiohttp.ClientSession() as http:
        status, text, _ = await send(http, open_gateway, "/api/v1/auths/api_key", "", token=token)
        assert status == 200 and "sk-" in text, text
    assert api_keys_of(open_gateway, user_id) == 1


async def test_bearer_header_from_any_origin_works(
    open_gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """A header a page can only set after a preflight, and a token it cannot know."""
    user_id, token = victim()
    marker = f"bearer-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        status, text, resp = await send(
            http,
            open_gateway,
            "/api/chat/completions",
            completion_body(marker),
            token=token,
            by="bearer",
            headers={"Origin": EVIL},
            content_type="application/json",
        )
        assert status == 200, text
        assert resp.headers["Access-Control-Allow-Origin"] == EVIL
        assert "Access-Control-Allow-Credentials" not in resp.headers
        status, text, _ = await send(
            http,
            open_gateway,
            "/api/v1/auths/api_key",
            "",
            token=token,
            by="bearer",
            headers={"Origin": EVIL},
        )
        assert status == 200, text
    assert len(fake_upstream.requests_for(marker)) == 1
    assert api_keys_of(open_gateway, user_id) == 1


async def test_listed_origin_with_the_cookie_works_and_gets_credentials(
    listed_gateway: GatewayProcess,
) -> None:
    _, token = victim()
    title = f"listed-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        status, text, resp = await send(
            http,
            listed_gateway,
            "/api/v1/chats/new",
            new_chat_body(title),
            token=token,
            headers={"Origin": GOOD, "Sec-Fetch-Site": "cross-site"},
            content_type="application/json",
        )
        assert status == 200, text
        assert resp.headers["Access-Control-Allow-Origin"] == GOOD
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in resp.headers.get("Vary", "")
        assert [c for c in await chats_of(http, listed_gateway, token) if c["title"] == title]
        status, text, _ = await send(
            http,
            listed_gateway,
            "/api/v1/chats/new",
            new_chat_body("planted"),
            token=token,
            headers={"Origin": EVIL},
            content_type="application/json",
        )
        assert status == 403, text


# -- a JSON body says so -----------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"],
)
async def test_json_routes_want_application_json(
    open_gateway: GatewayProcess, fake_upstream: FakeUpstream, content_type: str
) -> None:
    _, token = victim()
    marker = f"typed-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        for path, body in (
            ("/api/v1/chats/new", new_chat_body(marker)),
            ("/api/chat/completions", completion_body(marker)),
            ("/v1/chat/completions", completion_body(marker)),
        ):
            status, text, _ = await send(
                http, open_gateway, path, body, token=token, by="bearer", content_type=content_type
            )
            assert status == 415, (path, text)
            assert "application/json" in text
        assert [c for c in await chats_of(http, open_gateway, token) if c["title"] == marker] == []
    assert fake_upstream.requests_for(marker) == []


# -- credentials only for listed origins -------------------------------------------------
async def test_no_credentials_granted_under_the_wildcard(open_gateway: GatewayProcess) -> None:
    preflight = {
        "Origin": EVIL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with aiohttp.ClientSession() as http:
        async with http.options(open_gateway.url + "/api/chat/completions", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] in (EVIL, "*")
            assert "Access-Control-Allow-Credentials" not in resp.headers
        for path in ("/health", "/api/v1/chats/?page=1", "/ws/socket.io/?EIO=4&transport=polling"):
            _, token = victim()
            headers = {"Origin": EVIL, "Cookie": f"token={token}"}
            async with http.get(open_gateway.url + path, headers=headers) as resp:
                assert "Access-Control-Allow-Credentials" not in resp.headers, path
