"""Every `/api/v1/chats/*` route, with its error cases: unknown id, another user's chat, bad body."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.gatewayproc import GatewayProcess, make_token

RESPONSE_KEYS = {
    "id",
    "user_id",
    "title",
    "chat",
    "updated_at",
    "created_at",
    "share_id",
    "archived",
    "pinned",
    "meta",
    "folder_id",
}
ITEM_KEYS = {"id", "title", "updated_at", "created_at", "last_read_at"}


class User:
    def __init__(self, gateway: GatewayProcess, name: str | None = None) -> None:
        self.url = gateway.url + "/api/v1/chats"
        self.id = name or f"routes-{uuid.uuid4().hex[:10]}"
        self.headers = {"Authorization": f"Bearer {make_token(self.id)}"}

    async def call(self, method: str, path: str = "/", body: Any = None, expect: int = 200) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.url + path, json=body, headers=self.headers
            ) as resp:
                data = json.loads(await resp.text())
                assert resp.status == expect, (method, path, resp.status, data)
                return data

    async def new(self, title: str = "t", **chat: Any) -> dict[str, Any]:
        history = {
            "currentId": "a",
            "messages": {
                "u": {
                    "id": "u",
                    "role": "user",
                    "content": f"question about {title}",
                    "childrenIds": ["a"],
                    "odd": {"k": [1, None]},
                },
                "a": {
                    "id": "a",
                    "parentId": "u",
                    "role": "assistant",
                    "content": "answer",
                    "done": True,
                },
            },
        }
        result: dict[str, Any] = await self.call(
            "POST", "/new", {"chat": {"title": title, "history": history, **chat}}
        )
        return result


@pytest.fixture
def alice(gateway: GatewayProcess) -> User:
    return User(gateway)


@pytest.fixture
def bob(gateway: GatewayProcess) -> User:
    return User(gateway)


async def test_create_get_and_round_trip(alice: User) -> None:
    created = await alice.new("hello", models=["m"], custom={"x": 1})
    assert set(created) == RESPONSE_KEYS and created["user_id"] == alice.id
    assert 1.6e9 < created["updated_at"] < 1e10 and created["chat"]["timestamp"] > 1e12
    got = await alice.call("GET", f"/{created['id']}")
    assert got["chat"]["custom"] == {"x": 1} and got["chat"]["models"] == ["m"]
    assert got["chat"]["history"]["messages"]["u"]["odd"] == {"k": [1, None]}
    assert [m["id"] for m in got["chat"]["messages"]] == ["u", "a"]


async def test_create_from_a_flat_message_list(alice: User) -> None:
    created = await alice.call(
        "POST",
        "/new",
        {
            "chat": {
                "messages": [
                    {"id": "x", "role": "user", "content": "a"},
                    {"id": "y", "role": "assistant", "content": "b"},
                ]
            }
        },
    )
    history = created["chat"]["history"]
    assert history["messages"]["y"]["parentId"] == "x" and history["currentId"] == "y"
    assert created["title"] == "New Chat"


@pytest.mark.parametrize("body", [None, [], {"chat": "x"}, {"nochat": {}}])
async def test_bad_bodies(alice: User, body: Any) -> None:
    error = await alice.call("POST", "/new", body, expect=400)
    assert "detail" in error


async def test_unknown_and_foreign_chats_are_404_everywhere(alice: User, bob: User) -> None:
    chat_id = (await alice.new())["id"]
    routes = [
        ("GET", ""),
        ("POST", ""),
        ("DELETE", ""),
        ("GET", "/pinned"),
        ("POST", "/pin"),
        ("POST", "/clone"),
        ("POST", "/archive"),
        ("POST", "/share"),
        ("DELETE", "/share"),
        ("POST", "/folder"),
        ("PATCH", "/params"),
        ("GET", "/tags"),
        ("POST", "/tags"),
        ("DELETE", "/tags"),
        ("DELETE", "/tags/all"),
        ("POST", "/messages/u"),
        ("POST", "/messages/u/event"),
    ]
    bodies = {
        "": {"chat": {}},
        "/folder": {"folder_id": "f"},
        "/params": {},
        "/tags": {"name": "x"},
        "/messages/u": {"content": "x"},
        "/messages/u/event": {"type": "x"},
    }
    for method, suffix in routes:
        body = bodies.get(suffix)
        for who, target in ((bob, chat_id), (alice, "no-such-chat")):
            error = await who.call(method, f"/{target}{suffix}", body, expect=404)
            assert error["detail"]
    assert (await alice.call("GET", f"/{chat_id}"))["title"] == "t", "nothing changed"


async def test_partial_update_branch_and_current_id(alice: User) -> None:
    chat_id = (await alice.new())["id"]
    update = {
        "chat": {
            "title": "renamed",
            "history": {
                "current_id": "a2",
                "messages": {
                    "u": {"childrenIds": ["a", "a2"]},
                    "a2": {
                        "id": "a2",
                        "parentId": "u",
                        "role": "assistant",
                        "content": "other answer",
                    },
                },
            },
        }
    }
    got = await alice.call("POST", f"/{chat_id}", update)
    messages = got["chat"]["history"]["messages"]
    assert got["title"] == "renamed" and messages["u"]["content"] == "question about t"
    assert (
        messages["u"]["childrenIds"] == ["a", "a2"] and got["chat"]["history"]["currentId"] == "a2"
    )
    assert [m["id"] for m in got["chat"]["messages"]] == ["u", "a2"]
    error = await alice.call(
        "POST",
        f"/{chat_id}",
        {"chat": {"history": {"messages": {"z": {"parentId": "ghost"}}}}},
        expect=400,
    )
    assert "'z'" in error["detail"] and "ghost" in error["detail"]


async def test_paging_search_and_lists(alice: User) -> None:
    for i in range(61):
        await alice.call("POST", "/new", {"chat": {"title": f"chat {i}"}})
    await alice.new("needle title")
    page1 = await alice.call("GET", "/?page=1")
    page2 = await alice.call("GET", "/list?page=2")
    assert len(page1) == 60 and len(page2) == 2 and await alice.call("GET", "/?page=3") == []
    assert set(page1[0]) == ITEM_KEYS
    # Newest first; chats made in the same second may come in any order.
    assert len({c["id"] for c in page1 + page2}) == 62
    assert len(await alice.call("GET", "/")) == 62
    await alice.call("GET", "/?page=x", expect=400)
    found = await alice.call("GET", "/search?text=NEEDLE")
    assert [c["title"] for c in found] == ["needle title"]
    assert [c["title"] for c in await alice.call("GET", "/search?text=question about needle")] == [
        "needle title"
    ]
    assert len(await alice.call("GET", "/all")) == 62


async def test_pin_archive_and_bulk_archive(alice: User) -> None:
    chat_id = (await alice.new("p"))["id"]
    assert (await alice.call("POST", f"/{chat_id}/pin"))["pinned"] is True
    assert await alice.call("GET", f"/{chat_id}/pinned") is True
    assert [c["id"] for c in await alice.call("GET", "/pinned")] == [chat_id]
    archived = await alice.call("POST", f"/{chat_id}/archive")
    assert archived["archived"] is True and archived["pinned"] is False
    assert [c["id"] for c in await alice.call("GET", "/archived")] == [chat_id]
    assert [c["id"] for c in await alice.call("GET", "/all/archived")] == [chat_id]
    assert await alice.call("GET", "/") == []
    assert (await alice.call("POST", f"/{chat_id}/archive"))["archived"] is False
    await alice.new("q")
    assert await alice.call("POST", "/archive/all") is True
    assert await alice.call("GET", "/") == [] and len(await alice.call("GET", "/archived")) == 2
    assert await alice.call("POST", "/unarchive/all") is True
    assert len(await alice.call("GET", "/")) == 2


async def test_share_view_unshare_and_clone_shared(alice: User, bob: User) -> None:
    chat_id = (await alice.new("shared"))["id"]
    share_id = (await alice.call("POST", f"/{chat_id}/share"))["share_id"]
    assert share_id and (await alice.call("POST", f"/{chat_id}/share"))["share_id"] == share_id
    view = await bob.call("GET", f"/share/{share_id}")
    assert (
        view["id"] == share_id and view["chat"]["history"]["messages"]["a"]["content"] == "answer"
    )
    copy = await bob.call("POST", f"/{share_id}/clone/shared")
    assert copy["user_id"] == bob.id and copy["id"] != chat_id
    assert copy["chat"]["history"]["messages"]["a"]["content"] == "answer"
    assert await alice.call("DELETE", f"/{chat_id}/share") is True
    assert await alice.call("DELETE", f"/{chat_id}/share") is False
    await bob.call("GET", f"/share/{share_id}", expect=404)
    await bob.call("POST", f"/{share_id}/clone/shared", expect=404)


async def test_clone(alice: User) -> None:
    chat_id = (await alice.new("orig"))["id"]
    clone = await alice.call("POST", f"/{chat_id}/clone", {})
    assert clone["title"] == "Clone of orig" and clone["id"] != chat_id
    named = await alice.call("POST", f"/{chat_id}/clone", {"title": "mine"})
    assert named["title"] == "mine" and named["chat"]["history"] == clone["chat"]["history"]


async def test_tags(alice: User) -> None:
    first = (await alice.new("one"))["id"]
    second = (await alice.new("two"))["id"]
    tags = await alice.call("POST", f"/{first}/tags", {"name": "Work Stuff"})
    assert tags == [{"id": "work_stuff", "name": "Work Stuff", "user_id": alice.id, "meta": None}]
    await alice.call("POST", f"/{second}/tags", {"name": "work stuff"})
    await alice.call("POST", f"/{second}/tags", {"name": "home"})
    await alice.call("POST", f"/{second}/tags", {}, expect=400)
    assert [t["id"] for t in await alice.call("GET", f"/{second}/tags")] == ["work_stuff", "home"]
    assert sorted(t["id"] for t in await alice.call("GET", "/all/tags")) == ["home", "work_stuff"]
    by_tag = await alice.call("POST", "/tags", {"name": "Work Stuff"})
    assert sorted(c["id"] for c in by_tag) == sorted([first, second])
    assert [c["id"] for c in await alice.call("GET", "/search?text=tag:home")] == [second]
    assert await alice.call("DELETE", f"/{first}/tags", {"name": "work stuff"}) == []
    assert await alice.call("DELETE", f"/{second}/tags/all") is True
    assert await alice.call("GET", "/all/tags") == []


async def test_folders_params_and_messages(alice: User) -> None:
    chat_id = (await alice.new("f"))["id"]
    moved = await alice.call("POST", f"/{chat_id}/folder", {"folder_id": "folder-1"})
    assert moved["folder_id"] == "folder-1"
    await alice.call("POST", f"/{chat_id}/folder", {"folder_id": 5}, expect=400)
    assert [c["id"] for c in await alice.call("GET", "/folder/folder-1")] == [chat_id]
    assert [c["id"] for c in await alice.call("GET", "/folder/folder-1/list")] == [chat_id]
    assert await alice.call("GET", "/folder/other/list") == []
    params = await alice.call("PATCH", f"/{chat_id}/params", {"temperature": 0.2})
    assert params["chat"]["params"] == {"temperature": 0.2}
    edited = await alice.call("POST", f"/{chat_id}/messages/a", {"content": "edited"})
    assert edited["chat"]["history"]["messages"]["a"]["content"] == "edited"
    assert edited["chat"]["history"]["messages"]["a"]["done"] is True
    added = await alice.call("POST", f"/{chat_id}/messages/n", {"content": "new one"})
    assert added["chat"]["history"]["messages"]["n"]["parentId"] == "a"
    await alice.call(
        "POST", f"/{chat_id}/messages/x", {"content": "x", "parentId": "ghost"}, expect=400
    )
    assert (
        await alice.call("POST", f"/{chat_id}/messages/a/event", {"type": "status", "data": {}})
        is True
    )
    await alice.call("POST", f"/{chat_id}/messages/nope/event", {"type": "status"}, expect=404)
    await alice.call("POST", f"/{chat_id}/messages/a/event", {"data": 1}, expect=400)


async def test_import(alice: User) -> None:
    body = {
        "chat": {"title": "old", "history": {"messages": {"m": {"role": "user", "content": "x"}}}},
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_100,
        "pinned": True,
        "folder_id": "f9",
        "meta": {"src": "export"},
    }
    imported = await alice.call("POST", "/import", body)
    assert imported["created_at"] == 1_700_000_000 and imported["updated_at"] == 1_700_000_100
    assert (
        imported["pinned"] is True
        and imported["folder_id"] == "f9"
        and imported["meta"] == {"src": "export"}
    )


async def test_delete_one_and_all_only_touch_the_caller(alice: User, bob: User) -> None:
    mine = (await alice.new("a"))["id"]
    await alice.new("b")
    theirs = (await bob.new("c"))["id"]
    assert await alice.call("DELETE", f"/{mine}") is True
    await alice.call("GET", f"/{mine}", expect=404)
    assert await alice.call("DELETE", "/") is True
    assert await alice.call("GET", "/") == []
    assert (await bob.call("GET", f"/{theirs}"))["title"] == "c"
