"""What the web app asks for beside chats and found missing: pictures of users and
models, shared folders, and release notes for its "What's New" modal."""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET

import aiohttp

from gateway.flavours.avatars import avatar_svg, initials
from tests.clients import get_json
from tests.gatewayproc import GatewayProcess, make_token

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def fetch(url: str, token: str | None) -> tuple[int, str, bytes, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            return resp.status, resp.content_type, await resp.read(), dict(resp.headers)


async def test_a_user_without_a_picture_gets_a_badge_of_initials(gateway: GatewayProcess) -> None:
    user_id = f"pic-{uuid.uuid4().hex[:8]}"
    token = make_token(user_id, name="Ada Lovelace")
    await get_json(f"{gateway.url}/api/v1/auths/", token)  # the user exists now
    status, kind, body, headers = await fetch(
        f"{gateway.url}/api/v1/users/{user_id}/profile/image", token
    )
    assert (status, kind) == (200, "image/svg+xml")
    assert ET.fromstring(body).tag.endswith("svg")  # well-formed SVG
    assert b">AL</text>" in body and "max-age" in headers["Cache-Control"]
    # Another signed-in user sees the same picture; a stranger without a token none.
    other = make_token(f"pic-{uuid.uuid4().hex[:8]}")
    assert (await fetch(f"{gateway.url}/api/v1/users/{user_id}/profile/image", other))[2] == body
    assert (await fetch(f"{gateway.url}/api/v1/users/{user_id}/profile/image", None))[0] == 401
    # An unknown user (a removed one in an old chat) still gets a badge.
    unknown = await fetch(
        f"{gateway.url}/api/v1/users/nobody-{uuid.uuid4().hex}/profile/image", token
    )
    assert unknown[:2] == (200, "image/svg+xml")


async def test_a_model_has_a_picture(gateway: GatewayProcess) -> None:
    token = make_token("pic-models")
    status, kind, body, _ = await fetch(
        f"{gateway.url}/api/v1/models/model/profile/image?id=fake-model", token
    )
    assert (status, kind) == (200, "image/svg+xml") and b">FM</text>" in body


def test_uploaded_pictures_and_badges_are_what_the_store_says() -> None:
    from gateway.flavours.avatars import data_url_image

    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert data_url_image(url) == ("image/png", PNG)
    assert data_url_image("data:text/html;base64,PGgxPg==") is None  # never HTML
    assert data_url_image("/user.png") is None
    assert initials("ada.lovelace@example.com") == "AL" and initials("") == "?"
    badge = avatar_svg("<script>", "1")
    assert badge == avatar_svg("<script>", "1")  # the same on every replica
    assert b"<script" not in badge and b">&lt;</text>" in badge


async def test_shared_folders_and_release_notes(gateway: GatewayProcess) -> None:
    token = make_token("pic-notes")
    assert await get_json(f"{gateway.url}/api/v1/folders/shared", token) == []
    notes = await get_json(f"{gateway.url}/api/changelog", None)
    # The modal's shape: {version: {date, section: [{title, content}]}}, not empty.
    (version,) = notes
    entry = notes[version]
    assert entry["date"] and entry["added"]
    assert all(item["title"] and item["content"] for item in entry["added"])


async def test_the_sidebar_search_finds_chats_by_every_word(gateway: GatewayProcess) -> None:
    from tests.clients import post_json

    token = make_token(f"search-{uuid.uuid4().hex[:8]}")

    async def chat(title: str, text: str) -> str:
        body = {
            "chat": {
                "title": title,
                "history": {
                    "currentId": "m1",
                    "messages": {"m1": {"id": "m1", "role": "user", "content": text}},
                },
            }
        }
        return str((await post_json(f"{gateway.url}/api/v1/chats/new", token, body))["id"])

    tides = await chat("Tides", "how does the moon pull the ocean")
    moon = await chat("Moon landing", "who walked on it first")
    await chat("Cooking", "a recipe for bread")
    found = await get_json(f"{gateway.url}/api/v1/search?q=moon&page=1", token)
    assert [item["id"] for item in found["items"]] == [moon, tides]  # title first
    assert found["has_more"] is False and found["kinds"] == ["chat"]
    hit = found["items"][1]
    assert hit["url"] == f"/c/{tides}?message=m1" and "moon" in hit["snippet"]
    assert set(hit) == {
        "id",
        "kind",
        "title",
        "context",
        "snippet",
        "preview",
        "url",
        "updated_at",
        "shared",
        "pinned",
    }
    both = await get_json(f"{gateway.url}/api/v1/search?q=moon+ocean", token)
    assert [item["id"] for item in both["items"]] == [tides]  # every word, across the chat
    # Others' chats are never found.
    stranger = make_token(f"search-{uuid.uuid4().hex[:8]}")
    assert (await get_json(f"{gateway.url}/api/v1/search?q=moon", stranger))["items"] == []


async def test_what_the_app_asks_about_features_it_does_not_have(gateway: GatewayProcess) -> None:
    token = make_token("pic-features")
    assert await get_json(f"{gateway.url}/api/v1/channels/", token) == []
    assert await get_json(f"{gateway.url}/ollama/api/version", token) == {"version": False}


async def test_a_picture_is_decoded_once_and_revalidated_by_its_etag(
    gateway: GatewayProcess,
) -> None:
    """A browser that has the picture gets 304 and no body; a new upload is a new
    ETag, and the old one gets the new picture."""
    user_id = f"pic-{uuid.uuid4().hex[:8]}"
    token = make_token(user_id, name="Grace Hopper")
    auth = {"Authorization": f"Bearer {token}"}
    picture = f"{gateway.url}/api/v1/users/{user_id}/profile/image"
    other = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64  # (served as stored)
    async with aiohttp.ClientSession() as http:
        for body in (PNG, other):
            url = "data:image/png;base64," + base64.b64encode(body).decode()
            update = f"{gateway.url}/api/v1/auths/update/profile"
            async with http.post(update, json={"profile_image_url": url}, headers=auth) as resp:
                assert resp.status == 200
            async with http.get(picture, headers=auth) as resp:
                assert resp.status == 200 and await resp.read() == body
                etag = resp.headers["ETag"]
            for asked in (etag, f"W/{etag}", f'"x", {etag}', "*"):
                async with http.get(picture, headers={**auth, "If-None-Match": asked}) as resp:
                    assert resp.status == 304 and await resp.read() == b"", asked
                    assert (
                        resp.headers["ETag"] == etag and "max-age" in resp.headers["Cache-Control"]
                    )
            if body is PNG:
                first = etag
        assert first != etag
        async with http.get(picture, headers={**auth, "If-None-Match": first}) as resp:
            assert resp.status == 200 and await resp.read() == other
        # A badge of initials has one too.
        badge = f"{gateway.url}/api/v1/models/model/profile/image?id=fake-model"
        async with http.get(badge, headers=auth) as resp:
            etag = resp.headers["ETag"]
        async with http.get(badge, headers={**auth, "If-None-Match": etag}) as resp:
            assert resp.status == 304


async def test_the_decoded_pictures_are_kept_within_their_bound() -> None:
    from gateway.api.openwebui.images import Pictures

    def data_url(body: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(body).decode()

    pictures = Pictures(max_bytes=3 * (len(data_url(PNG * 40)) + len(PNG * 40)))
    first = await pictures.get("a", data_url(PNG * 40))
    assert first is not None and first.body == PNG * 40
    assert await pictures.get("a", data_url(PNG * 40)) is first  # decoded once
    changed = await pictures.get("a", data_url(PNG * 41))
    assert changed is not None and changed is not first and changed.etag != first.etag
    assert await pictures.get("b", "https://elsewhere.example/x.png") is None
    for user in ("b", "c", "d"):  # three more: "a", the least recently asked for, goes
        await pictures.get(user, data_url(PNG * 40))
    kept = await pictures.get("b", data_url(PNG * 40))
    assert kept is not None and await pictures.get("b", data_url(PNG * 40)) is kept
    assert await pictures.get("a", data_url(PNG * 41)) is not changed  # decoded again
