"""A backend-controlled reply (`ChatService.start_reply`) opens its model server
before it returns (`starter.into`).  When its caller leaves meanwhile (the HTTP
request cancelled: the client went away), the placeholder it wrote is ended as a
stopped reply with no text, not left unfinished; the outbox it subscribed leaves
the hub; the user's reply slot is given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway import rooms
from gateway.chat.service import ChatService
from gateway.commands import Ask
from gateway.edge.auth import Principal
from gateway.fanout.hub import Hub
from gateway.store import ChatRecord, MessageRecord, Store, open_store
from gateway.upstream import ModelInfo
from gateway.upstream.router import ModelRouter


class Hanging:
    """The edge: a model server that takes the request and never answers."""

    name = "hanging"

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo("m", "m", "test", 0)]

    async def open(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store("", tmp_path)
    yield opened
    await opened.close()


async def test_a_reply_whose_caller_left_while_it_opened_is_ended_as_stopped(
    store: Store,
) -> None:
    upstream, hub = Hanging(), Hub(100)
    service = ChatService(ModelRouter([upstream], 60.0), store, hub, max_replies_per_user=1)
    alice = Principal("alice", "Alice")
    question = MessageRecord("c1", "q1", None, "user", "Hello?")
    await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
    ask = Ask(model="m", messages=[], chat_id="c1", message_id="a1")
    room = rooms.reply("c1", "a1")

    started = asyncio.ensure_future(service.start_reply(alice, ask))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    placeholder = await store.get_message("c1", "a1")
    assert placeholder is not None and placeholder.done is False  # written, then asked
    assert room in hub._rooms and service.replies_running() == 1
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started

    ended = await store.get_message("c1", "a1")
    assert ended is not None
    assert ended.done is True and ended.fields.get("cancelled") is True and ended.content == ""
    assert room not in hub._rooms  # its outbox left the hub
    assert service.replies_running() == 0  # the slot is given back: the user may ask again
    again = asyncio.ensure_future(service.start_reply(alice, ask))
    await asyncio.sleep(0.05)
    assert not again.done()  # asking, not refused for a slot never given back
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)
