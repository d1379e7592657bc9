"""The small Open WebUI routes around chats (`gateway/api/openwebui/webapp.py`, docs/PROTOCOLS.md §1.2-1.3).

Config, version and changelog, per-user settings, the empty lists the web app
loads at start, and the deprecated `/api/chat/completed`, each against a real
gateway process.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.application.accounts import MAX_SETTINGS_BYTES
from gateway.chat.background import MAX_PER_USER
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

# Keys only a signed-in user's config carries (Open WebUI's `get_app_config`).
SIGNED_IN_KEYS = {"default_models", "default_prompt_suggestions", "permissions"}
EMPTY_LISTS = [
    "/api/v1/tools/",
    "/api/v1/skills/",
    "/api/v1/functions/",
    "/api/v1/folders/",
    "/api/v1/configs/banners",
]
COMPLETED_PATHS = ["/api/chat/completed", "/api/v1/chat/completed"]


def new_user_id() -> str:
    return f"owui-{uuid.uuid4().hex[:12]}"


def bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user_id)}"}


async def call(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    raw: bytes | None = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any]:
    """(status, decoded JSON body); `raw` sends bytes as they are instead of `body` as JSON."""
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        async with http.request(method, url, **kwargs) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None
    finally:
        if own:
            await http.close()


def assert_anonymous(config: dict[str, Any]) -> None:
    assert config["status"] is True
    features = config["features"]
    assert features["enable_login_form"] is True and features["enable_websocket"] is True
    # "onboarding: true" makes the web app insist on creating an admin (§1.3).
    assert config.get("onboarding") is not True
    assert not SIGNED_IN_KEYS & set(config), sorted(config)
    assert "enable_api_keys" not in features


def assert_signed_in(config: dict[str, Any]) -> None:
    assert config["status"] is True
    assert config.get("onboarding") is not True
    assert "default_models" in config
    features = config["features"]
    assert features["enable_api_keys"] is True and features["enable_login_form"] is True


# --- /api/config -------------------------------------------------------------------


async def test_config_without_credentials_is_the_anonymous_shape(gateway: GatewayProcess) -> None:
    status, config = await call("GET", gateway.url + "/api/config")
    assert status == 200
    assert_anonymous(config)
    assert config["features"]["enable_signup"] is True


async def test_config_with_the_signup_cookie_is_the_signed_in_shape(
    gateway: GatewayProcess,
) -> None:
    # aiohttp refuses cookies from bare IP hosts unless the jar is "unsafe".
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        status, session = await call(
            "POST",
            gateway.url + "/api/v1/auths/signup",
            body={
                "name": "Cookie",
                "email": f"{new_user_id()}@example.com",
                "password": "correct horse",
            },
            session=http,
        )
        assert status == 200
        assert [c.value for c in jar if c.key == "token"] == [session["token"]]
        # No Authorization header: only the cookie says who this is.
        status, config = await call("GET", gateway.url + "/api/config", session=http)
        assert status == 200
        assert_signed_in(config)
        # After signing out the cookie is gone and the page is a stranger's again.
        status, _ = await call("POST", gateway.url + "/api/v1/auths/signout", session=http)
        assert status == 200
        status, config = await call("GET", gateway.url + "/api/config", session=http)
        assert status == 200
        assert_anonymous(config)


async def test_config_with_a_bearer_token_is_the_signed_in_shape(gateway: GatewayProcess) -> None:
    status, config = await call("GET", gateway.url + "/api/config", headers=bearer(new_user_id()))
    assert status == 200
    assert_signed_in(config)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_token("owui-expired", ttl_s=-60), id="expired"),
        pytest.param(
            make_token("owui-forged", secret="not-the-gateway-secret-but-just-as-long"), id="forged"
        ),
        pytest.param("not-a-jwt", id="garbage"),
    ],
)
async def test_config_with_a_bad_cookie_is_anonymous_not_401(
    gateway: GatewayProcess, token: str
) -> None:
    # An expired cookie must not break the sign-in page.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, cookies={"token": token}) as http:
        status, config = await call("GET", gateway.url + "/api/config", session=http)
    assert status == 200, config
    assert_anonymous(config)


async def test_config_with_a_valid_hand_set_cookie_is_signed_in(gateway: GatewayProcess) -> None:
    # The control for the test above: the same way of sending the cookie does work.
    jar = aiohttp.CookieJar(unsafe=True)
    cookies = {"token": make_token(new_user_id())}
    async with aiohttp.ClientSession(cookie_jar=jar, cookies=cookies) as http:
        status, config = await call("GET", gateway.url + "/api/config", session=http)
    assert status == 200
    assert_signed_in(config)


async def test_config_says_when_signup_is_disabled(start_gateway: Any) -> None:
    gw = start_gateway({"ENABLE_SIGNUP": "false"})
    # A gateway with no users yet: still no onboarding.
    status, config = await call("GET", gw.url + "/api/config")
    assert status == 200
    assert_anonymous(config)
    assert config["features"]["enable_signup"] is False
    status, config = await call("GET", gw.url + "/api/config", headers=bearer(new_user_id()))
    assert status == 200
    assert_signed_in(config)
    assert config["features"]["enable_signup"] is False


# --- /api/version, /api/changelog ---------------------------------------------------


async def version_of(url: str) -> dict[str, Any]:
    status, body = await call("GET", url + "/api/version")
    assert status == 200
    assert set(body) == {"version", "deployment_id"}
    assert isinstance(body["version"], str) and body["version"]
    assert isinstance(body["deployment_id"], str)
    return dict(body)


async def test_version_is_constant_for_the_process(gateway: GatewayProcess) -> None:
    first = await version_of(gateway.url)
    for _ in range(10):
        assert await version_of(gateway.url) == first


async def test_version_survives_a_restart(
    gateway: GatewayProcess, start_gateway: Any, tmp_path: Path
) -> None:
    # The web app reloads every open tab when the version changes between two
    # socket connects (§1.3), so a restart or another replica must not change it.
    data = tmp_path / "restarted"
    before = start_gateway(data_dir=data)
    seen = await version_of(before.url)
    before.stop()
    after = start_gateway(data_dir=data)
    assert await version_of(after.url) == seen
    assert await version_of(gateway.url) == seen


async def test_changelog_has_what_the_modal_shows(gateway: GatewayProcess) -> None:
    # An empty one made the web app open an empty "What's New" that blocked every
    # click; its shape is checked in test_webapp_pictures.py.
    status, body = await call("GET", gateway.url + "/api/changelog")
    assert status == 200 and body and all(entry["added"] for entry in body.values())


# --- /api/v1/users/user/settings ------------------------------------------------------


async def test_settings_start_empty_then_round_trip(gateway: GatewayProcess) -> None:
    url = gateway.url + "/api/v1/users/user/settings"
    alice, bob = bearer(new_user_id()), bearer(new_user_id())
    status, body = await call("GET", url, headers=alice)
    assert status == 200 and body == {"ui": {}}
    settings = {"ui": {"theme": "dark"}}
    status, body = await call("POST", url + "/update", headers=alice, body=settings)
    assert status == 200 and body == settings
    status, body = await call("GET", url, headers=alice)
    assert status == 200 and body == settings
    # The web app sends one part at a time (`{keybindings}`, `{ui}`): merged, key by key.
    keys = {"keybindings": {"newChat": "mod+shift+o"}}
    await call("POST", url + "/update", headers=alice, body=keys)
    status, body = await call("GET", url, headers=alice)
    assert status == 200 and body == {**settings, **keys}
    # Settings are per user.
    status, body = await call("GET", url, headers=bob)
    assert status == 200 and body == {"ui": {}}


async def test_settings_need_a_token(gateway: GatewayProcess) -> None:
    url = gateway.url + "/api/v1/users/user/settings"
    status, body = await call("GET", url)
    assert status == 401 and isinstance(body["detail"], str)
    status, body = await call("POST", url + "/update", body={"ui": {"theme": "dark"}})
    assert status == 401 and isinstance(body["detail"], str)


@pytest.mark.parametrize(
    "raw", [b"[]", b'"dark"', b"3", b"null", b"{not json"], ids=lambda r: r.decode()
)
async def test_settings_update_refuses_a_non_object(gateway: GatewayProcess, raw: bytes) -> None:
    user = bearer(new_user_id())
    url = gateway.url + "/api/v1/users/user/settings"
    status, body = await call("POST", url + "/update", headers=user, raw=raw)
    assert status == 400 and isinstance(body["detail"], str)
    # Nothing was stored.
    status, body = await call("GET", url, headers=user)
    assert status == 200 and body == {"ui": {}}


# --- the empty lists ----------------------------------------------------------------------


@pytest.mark.parametrize("path", EMPTY_LISTS)
async def test_empty_lists(gateway: GatewayProcess, path: str) -> None:
    status, body = await call("GET", gateway.url + path, headers=bearer(new_user_id()))
    assert status == 200 and body == []
    status, body = await call("GET", gateway.url + path)
    assert status == 401 and isinstance(body["detail"], str)


async def test_folders_are_not_offered_and_making_one_says_why(gateway: GatewayProcess) -> None:
    # The config offered folders and making one was a bare 405.
    headers = bearer(new_user_id())
    status, config = await call("GET", gateway.url + "/api/config", headers=headers)
    assert status == 200 and config["features"]["enable_folders"] is False
    status, body = await call(
        "POST", gateway.url + "/api/v1/folders/", headers=headers, body={"name": "Work"}
    )
    assert status == 400 and "Folders are not supported" in body["detail"]


# --- /api/chat/completed ----------------------------------------------------------------


async def new_chat(gateway: GatewayProcess, headers: dict[str, str]) -> str:
    """A chat with two branches under the first answer; the current one is u1-a1-u2-a2.

    u1 ── a1 ── u2 ── a2   (currentId)
           └─── u3
    """
    messages = {
        "u1": {"id": "u1", "role": "user", "content": "first", "childrenIds": ["a1"]},
        "a1": {
            "id": "a1",
            "parentId": "u1",
            "role": "assistant",
            "content": "one",
            "childrenIds": ["u2", "u3"],
            "done": True,
        },
        "u2": {
            "id": "u2",
            "parentId": "a1",
            "role": "user",
            "content": "second",
            "childrenIds": ["a2"],
        },
        "a2": {
            "id": "a2",
            "parentId": "u2",
            "role": "assistant",
            "content": "two",
            "childrenIds": [],
            "done": True,
        },
        "u3": {
            "id": "u3",
            "parentId": "a1",
            "role": "user",
            "content": "other branch",
            "childrenIds": [],
        },
    }
    status, chat = await call(
        "POST",
        gateway.url + "/api/v1/chats/new",
        headers=headers,
        body={"chat": {"title": "completed", "history": {"currentId": "a2", "messages": messages}}},
    )
    assert status == 200, chat
    return str(chat["id"])


@pytest.mark.parametrize("path", COMPLETED_PATHS)
async def test_completed_without_a_chat_echoes_the_body(gateway: GatewayProcess, path: str) -> None:
    body = {
        "model": "fake-model",
        "messages": [{"id": "m", "role": "user", "content": "hi"}],
        "session_id": "sid",
        "id": "m",
    }
    status, answer = await call(
        "POST", gateway.url + path, headers=bearer(new_user_id()), body=body
    )
    assert status == 200 and answer == body


@pytest.mark.parametrize("path", COMPLETED_PATHS)
async def test_completed_answers_the_stored_current_path(
    gateway: GatewayProcess, path: str
) -> None:
    owner = bearer(new_user_id())
    chat_id = await new_chat(gateway, owner)
    body = {
        "model": "fake-model",
        "chat_id": chat_id,
        "session_id": "sid",
        "id": "a2",
        # What the client believes; the answer is what is stored.
        "messages": [{"id": "a2", "role": "assistant", "content": "stale"}],
    }
    status, answer = await call("POST", gateway.url + path, headers=owner, body=body)
    assert status == 200, answer
    assert {k: v for k, v in answer.items() if k != "messages"} == {
        k: v for k, v in body.items() if k != "messages"
    }
    assert [(m["id"], m["role"], m["content"]) for m in answer["messages"]] == [
        ("u1", "user", "first"),
        ("a1", "assistant", "one"),
        ("u2", "user", "second"),
        ("a2", "assistant", "two"),
    ]


@pytest.mark.parametrize("path", COMPLETED_PATHS)
async def test_completed_on_another_users_or_an_unknown_chat_is_404(
    gateway: GatewayProcess, path: str
) -> None:
    chat_id = await new_chat(gateway, bearer(new_user_id()))
    stranger = bearer(new_user_id())
    for unknown in (chat_id, str(uuid.uuid4())):
        status, answer = await call(
            "POST",
            gateway.url + path,
            headers=stranger,
            body={"model": "fake-model", "chat_id": unknown, "messages": []},
        )
        assert status == 404 and isinstance(answer["detail"], str), answer
        assert "first" not in json.dumps(answer)


@pytest.mark.parametrize("path", COMPLETED_PATHS)
@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"null", b"{not json"], ids=lambda r: r.decode())
async def test_completed_refuses_a_non_object(
    gateway: GatewayProcess, path: str, raw: bytes
) -> None:
    status, answer = await call("POST", gateway.url + path, headers=bearer(new_user_id()), raw=raw)
    assert status == 400 and isinstance(answer["detail"], str)


@pytest.mark.parametrize("path", COMPLETED_PATHS)
async def test_completed_needs_a_token(gateway: GatewayProcess, path: str) -> None:
    status, answer = await call("POST", gateway.url + path, body={"model": "fake-model"})
    assert status == 401 and isinstance(answer["detail"], str)


# --- Settings › Account (the 0.12.4 web app's calls on opening and saving it) ------------


async def test_account_settings_keep_variables_name_and_picture(gateway: GatewayProcess) -> None:
    # Each was a 404: a toast at every opening, a red MFA section, nothing saved.
    user_id = new_user_id()
    headers = bearer(user_id)
    base = gateway.url + "/api/v1"
    status, body = await call("GET", base + "/auths/mfa/status", headers=headers)
    assert status == 200 and body == {"enabled": False, "required": False}
    # The interface's location toggle: its position taken, not kept.
    position = {"location": "45.76, 4.84"}
    status, body = await call(
        "POST", base + "/users/user/info/update", headers=headers, body=position
    )
    assert status == 200 and body == {}
    status, body = await call("GET", base + "/users/user/variables", headers=headers)
    assert status == 200 and body == {"variables": {}}
    variables = {"city": "Lyon", "tone": "brief"}
    status, body = await call(
        "POST",
        base + "/users/user/variables/update",
        headers=headers,
        body={"variables": variables},
    )
    assert status == 200 and body == {"variables": variables}
    # Kept beside the web app's own settings, not among them, nor changed by them.
    await call(
        "POST",
        base + "/users/user/settings/update",
        headers=headers,
        body={"ui": {"a": 1}, "variables": {"sneaked": "in"}},
    )
    status, body = await call("GET", base + "/users/user/variables", headers=headers)
    assert body == {"variables": variables}
    status, body = await call("GET", base + "/users/user/settings", headers=headers)
    assert body == {"ui": {"a": 1}}
    # Bounded all together (found by the probe of LIMITS.md: each save merged its
    # keys in, so 3 MB a request grew the user's row without end).
    half = "x" * (MAX_SETTINGS_BYTES // 2)
    settings_url = base + "/users/user/settings/update"
    status, _ = await call("POST", settings_url, headers=headers, body={"one": half})
    assert status == 200
    status, body = await call("POST", settings_url, headers=headers, body={"two": half})
    assert status == 400 and "at most 256 KiB" in body["detail"]
    status, body = await call("GET", base + "/users/user/settings", headers=headers)
    assert set(body) == {"ui", "one"}
    status, body = await call(
        "POST",
        base + "/users/user/variables/update",
        headers=headers,
        body={"variables": {"x": 1}},
    )
    assert status == 400 and "variables" in body["detail"]

    picture = "data:image/png;base64,iVBORw0KGgo="
    profile = {"name": "  Renamed ", "profile_image_url": picture, "bio": "ignored"}
    status, body = await call("POST", base + "/auths/update/profile", headers=headers, body=profile)
    assert status == 200 and body["name"] == "Renamed" and body["id"] == user_id
    status, session = await call("GET", base + "/auths/", headers=headers)
    assert session["name"] == "Renamed" and session["profile_image_url"] == picture
    status, body = await call(
        "POST", base + "/auths/update/profile", headers=headers, body={"name": "n" * 257}
    )
    assert status == 400
    # A picture is a raster data: URL: an SVG carries script (served from the
    # gateway's origin, it would run there), another site's URL was a redirect.
    svg = "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9ImFsZXJ0KDEpIi8+"
    for url in (svg, "https://evil.example/x.png", "javascript:alert(1)"):
        status, body = await call(
            "POST", base + "/auths/update/profile", headers=headers, body={"profile_image_url": url}
        )
        assert status == 400 and "data: URL" in body["detail"], url
    async with aiohttp.ClientSession() as http:
        picture_url = f"{base}/users/{user_id}/profile/image"
        async with http.get(picture_url, headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in resp.headers["Content-Security-Policy"]


async def test_the_config_hides_what_the_gateway_does_not_do(gateway: GatewayProcess) -> None:
    status, config = await call("GET", gateway.url + "/api/config", headers=bearer(new_user_id()))
    assert status == 200 and config["features"]["enable_user_status"] is False
    assert config["ui"]["visibility"] == {"chat.merge": False, "settings.usage": False}


async def test_a_title_is_generated_when_asked(gateway: GatewayProcess) -> None:
    # The rename's ✨ "generate" (`generateTitle`): a 404 before, an error toast.
    url = gateway.url + "/api/v1/tasks/title/completions"
    messages = [
        {"role": "user", "content": "How do zebras sleep?"},
        {"role": "assistant", "content": "Standing up, mostly."},
    ]
    headers = bearer(new_user_id())
    status, body = await call(
        "POST", url, headers=headers, body={"model": "fake-model", "messages": messages}
    )
    assert status == 200
    assert json.loads(body["choices"][0]["message"]["content"]) == {"title": "🧪 Fake title"}
    # A model that gives none: the first question's words.
    status, body = await call(
        "POST", url, headers=headers, body={"model": "fake-error", "messages": messages}
    )
    assert status == 200
    assert json.loads(body["choices"][0]["message"]["content"]) == {"title": "How do zebras sleep?"}
    status, body = await call(
        "POST", url, headers=headers, body={"model": "fake-model", "messages": "x"}
    )
    assert status == 400
    status, body = await call("POST", url, body={"model": "fake-model", "messages": messages})
    assert status == 401


async def test_one_user_cannot_hold_everyones_titles_behind_a_slow_model(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    # Found by the probe of LIMITS.md: asked titles waited for the 8 background slots
    # without a per-user share or a bound: one user's 24 titles by a model that takes
    # 30 s held another user's title 87 s.  Past MAX_PER_USER of a user's, 429 at once.
    gw: GatewayProcess = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url})
    url = gw.url + "/api/v1/tasks/title/completions"
    question = f"How do zebras sleep? {uuid.uuid4().hex[:8]}"
    messages = [{"role": "user", "content": question}]
    slow, other = bearer(new_user_id()), bearer(new_user_id())
    body = {"model": "fake-loading", "messages": messages}
    waiting = [
        asyncio.ensure_future(call("POST", url, headers=slow, body=body))
        for _ in range(MAX_PER_USER)
    ]
    try:
        for _ in range(50):  # until the gateway holds all of them
            if len(fake_upstream.requests_for(question)) >= MAX_PER_USER:
                break
            await asyncio.sleep(0.1)
        status, refused = await call("POST", url, headers=slow, body=body)
        assert status == 429, refused
        assert "Too many titles" in refused["detail"]
        began = time.monotonic()
        status, answered = await call(
            "POST", url, headers=other, body={"model": "fake-model", "messages": messages}
        )
        assert status == 200 and time.monotonic() - began < 5
        assert json.loads(answered["choices"][0]["message"]["content"]) == {
            "title": "🧪 Fake title"
        }
    finally:
        for request in waiting:
            request.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
