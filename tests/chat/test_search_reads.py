"""The sidebar search (`chat/search.py`, `Chats.search`): each message lowered once
for the match and the excerpt (`found`, the same answer as a plain match then `item`),
a big chat matched in the off-loop thread, and at most MAX_READ_CHARS of messages
read by one search (then what it found)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import build_app
from gateway.chat import search
from gateway.settings import Settings
from gateway.store.records import ChatRecord, MessageRecord
from tests.gatewayproc import SECRET, make_token, served_in_process

WORDS = st.sampled_from(["moon", "Moon", "ocean", "tide", "bread", "ÄÖ", "äö", "x"])
TEXTS = st.lists(WORDS, max_size=6).map(" ".join)


def chat_of(title: str) -> ChatRecord:
    return ChatRecord(id="c", user_id="u", title=title, current_id=None, created_at=1, updated_at=1)


def messages_of(texts: list[str]) -> list[MessageRecord]:
    return [
        MessageRecord(chat_id="c", id=f"m{i}", parent_id=None, role="user", content=text, fields={})
        for i, text in enumerate(texts)
    ]


def matches(chat: ChatRecord, messages: list[MessageRecord], query: str) -> bool:
    """The plain reading of "every word in the title or in the messages"."""
    text = " ".join([chat.title, *(m.content for m in messages)]).lower()
    return all(term in text for term in search.terms_of(query))


@settings(max_examples=300, deadline=None)
@given(title=TEXTS, texts=st.lists(TEXTS, max_size=5), query=TEXTS)
def test_found_is_matches_then_item(title: str, texts: list[str], query: str) -> None:
    chat, messages = chat_of(title), messages_of(texts)
    expected = search.item(chat, messages, query) if matches(chat, messages, query) else None
    assert search.found(chat, messages, query) == expected


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    app = build_app(Settings(data_dir=tmp_path, secret_key=SECRET))
    async with served_in_process(app) as base:
        yield base


async def test_one_search_reads_a_bounded_amount(
    served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {"Authorization": f"Bearer {make_token('searcher')}"}
    text = "moon " * 20_000  # 100,000 characters a chat
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(3):
            body = {
                "chat": {
                    "title": f"chat {i}",
                    "history": {
                        "currentId": "m1",
                        "messages": {"m1": {"id": "m1", "role": "user", "content": text}},
                    },
                }
            }
            async with http.post(f"{served}/api/v1/chats/new", json=body) as resp:
                assert resp.status == 200

        async def found() -> dict[str, object]:
            async with http.get(f"{served}/api/v1/search?q=moon") as resp:
                assert resp.status == 200
                result: dict[str, object] = await resp.json()
                return result

        whole = await found()
        assert len(whole["items"]) == 3 and whole["has_more"] is False  # type: ignore[arg-type]
        # A big chat is matched off the loop: the same answer.
        monkeypatch.setattr(search, "OFF_LOOP_CHARS", 1000)
        assert await found() == whole
        # Two chats' worth read at most: the search ends there with what it found, and
        # a later page (which reads the same chats first) finds nothing more: a client
        # paging while `has_more` stops.
        monkeypatch.setattr(search, "MAX_READ_CHARS", 2 * len(text))
        cut = await found()
        assert len(cut["items"]) == 2 and cut["has_more"] is False  # type: ignore[arg-type]
        monkeypatch.setattr(search, "PAGE_SIZE", 1)
        assert (await found())["has_more"] is True
        async with http.get(f"{served}/api/v1/search?q=moon&page=3") as resp:
            assert await resp.json() == {
                "items": [],
                "has_more": False,
                "scopes": [],
                "kinds": ["chat"],
            }
