"""Chat search takes `%` and `_` literally (issue 13, part of hole 8): each was a LIKE
wildcard, so searching for either listed every chat of the user.  Checked on SQLite
and PostgreSQL, in the store and through the search route."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from gateway.store import ChatRecord, MessageRecord, Store, open_store
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import fresh_pg_database

# title, the text of its one message
CHATS = {
    "percent": ("Budget", "spent 50% of it"),
    "underscore": ("Code", "call my_function()"),
    "backslash": ("Paths", "C:\\temp"),
    "plain": ("Holiday", "sun and sea"),
    "title_only": ("100% sure", "nothing odd here"),
}


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with AsyncExitStack() as stack:
        url = (
            ""
            if request.param == "sqlite"
            else await stack.enter_async_context(fresh_pg_database())
        )
        opened = await open_store(url, tmp_path)
        try:
            yield opened
        finally:
            await opened.close()


async def filled(store: Store) -> Store:
    for updated, (chat_id, (title, content)) in enumerate(CHATS.items()):
        await store.insert_chat(
            ChatRecord(chat_id, "u1", title, None, 100, 100 + updated),
            [MessageRecord(chat_id, "m1", None, "user", content)],
        )
    return store


async def found(store: Store, text: str) -> set[str]:
    return {chat.id for chat in await store.list_chats("u1", text=text)}


async def test_wildcards_are_literal(store: Store) -> None:
    await filled(store)
    assert await found(store, "%") == {"percent", "title_only"}
    assert await found(store, "_") == {"underscore"}
    assert await found(store, "\\") == {"backslash"}
    assert await found(store, "50%") == {"percent"}
    assert await found(store, "0%") == {"percent", "title_only"}
    assert await found(store, "my_f") == {"underscore"}
    assert await found(store, "my%f") == set()
    assert await found(store, "s_n") == set()  # "sun" would match an unescaped "_"
    assert await found(store, "%%") == set()
    # What worked before still does: substrings, any case, titles and messages.
    assert await found(store, "SUN") == {"plain"}
    assert await found(store, "budget") == {"percent"}


async def test_search_route_takes_wildcards_literally(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw").start()
    try:
        token = make_token(f"searcher-{uuid.uuid4().hex[:6]}")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for title in ("Budget 50%", "my_function", "Holiday"):
                body = {"chat": {"title": title, "history": {"currentId": None, "messages": {}}}}
                async with http.post(gw.url + "/api/v1/chats/new", json=body) as resp:
                    assert resp.status == 200, await resp.text()
            for text, expected in (("%", ["Budget 50%"]), ("_", ["my_function"])):
                async with http.get(
                    gw.url + "/api/v1/chats/search", params={"text": text}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert [chat["title"] for chat in await resp.json()] == expected
    finally:
        gw.stop()
