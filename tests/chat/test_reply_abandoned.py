"""A backend-controlled reply (`ChatService.start_reply`) writes its placeholder,
then opens its model server before it returns (`starter.into`).  A reply that is
not opened (its caller left: the HTTP request cancelled, during the write or
while the model server is asked; or a bug) has its placeholder ended as the
reply would have ended, not left unfinished; the outbox it subscribed leaves the
hub; the user's reply slot is given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import rooms
from gateway.application.replies import Replies
from gateway.chat.service import ChatService
from gateway.commands import Ask
from gateway.edge import metrics
from gateway.edge.auth import Principal
from gateway.fanout.hub import Hub
from gateway.store import ChatRecord, MessageRecord, Store, open_store
from gateway.store.drivers import SQLiteDriver
from gateway.upstream import ModelInfo
from gateway.upstream.openai import OpenAIUpstream
from gateway.upstream.router import ModelRouter
from tests.fakes.upstream import FakeUpstream
from tests.store.held import Hold, sqlite_of, thread_held

ALICE = Principal("alice", "Alice")
ASK = Ask(model="m", messages=[], chat_id="c1", message_id="a1")
ROOM = rooms.reply("c1", "a1")


class Upstream:
    """The edge: a model server that takes the request and never answers, or one
    whose client fails with a bug (`crash`)."""

    name = "edge"

    def __init__(self, crash: bool = False) -> None:
        self.asked = asyncio.Event()
        self.crash = crash

    async def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo("m", "m", "test", 0)]

    async def open(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        self.asked.set()
        if self.crash:
            raise RuntimeError("a bug in the model server's client")
        await asyncio.Event().wait()
        raise AssertionError("never answered")


@dataclass
class Gateway:
    store: Store
    hub: Hub
    upstream: Upstream
    service: ChatService

    @property
    def sqlite(self) -> SQLiteDriver:
        return sqlite_of(self.store)


@pytest.fixture(params=[False, True], ids=["hangs", "crashes"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    store = await open_store("", tmp_path)
    question = MessageRecord("c1", "q1", None, "user", "Hello?")
    await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
    upstream, hub = Upstream(crash=request.param), Hub(100)
    router = ModelRouter([upstream], 60.0)
    yield Gateway(store, hub, upstream, ChatService(router, store, hub, max_replies_per_user=1))
    await store.close()


async def ended_as(store: Store) -> tuple[bool | None, dict[str, Any], str]:
    reply = await store.get_message("c1", "a1")
    assert reply is not None
    return reply.done, reply.fields, reply.content


async def test_a_reply_not_opened_ends_its_placeholder(gateway: Gateway) -> None:
    store, hub, upstream, service = gateway.store, gateway.hub, gateway.upstream, gateway.service
    started = asyncio.ensure_future(service.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    if upstream.crash:
        with pytest.raises(RuntimeError):
            await started
        done, fields, _ = await ended_as(store)
        assert done is True and fields["error"] == {"content": "Internal error"}
    else:
        placeholder = await store.get_message("c1", "a1")
        assert placeholder is not None and placeholder.done is False  # written, then asked
        assert ROOM in hub._rooms and service.replies_running() == 1
        started.cancel()  # the caller left while the model server was asked
        with pytest.raises(asyncio.CancelledError):
            await started
        done, fields, content = await ended_as(store)
        assert done is True and fields.get("cancelled") is True and content == ""
    assert ROOM not in hub._rooms  # its outbox left the hub
    assert service.replies_running() == 0
    upstream.asked.clear()
    again = asyncio.ensure_future(service.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)  # asked again: its slot was given back
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_a_caller_that_leaves_during_the_write_leaves_no_unfinished_row(
    gateway: Gateway,
) -> None:
    store, hub, upstream, service = gateway.store, gateway.hub, gateway.upstream, gateway.service
    db = gateway.sqlite
    async with thread_held(db):
        started = asyncio.ensure_future(service.start_reply(ALICE, ASK))
        await asyncio.sleep(0.05)  # its read of the chat waits for the thread
        hold = Hold(db)  # behind that read: the placeholder's write will wait for it
    await hold.until_running()
    await asyncio.sleep(0.05)
    started.cancel()  # the caller leaves while the placeholder is being written
    await asyncio.sleep(0.05)
    assert not started.done()  # it waits for the write, to end what it wrote
    await hold.release()
    with pytest.raises(asyncio.CancelledError):
        await started
    done, fields, content = await ended_as(store)
    assert done is True and fields.get("cancelled") is True and content == ""
    assert not upstream.asked.is_set()  # the model server was never asked
    assert ROOM not in hub._rooms and service.replies_running() == 0


async def test_a_placeholder_never_written_is_neither_ended_nor_counted(
    gateway: Gateway,
) -> None:
    store, hub, upstream, service = gateway.store, gateway.hub, gateway.upstream, gateway.service
    db = gateway.sqlite
    # The database refuses the placeholder's write (a real refusal: a trigger).
    await db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    counted = {status: replies_ended(status) for status in ("failed", "cancelled")}
    with pytest.raises(Exception, match="refused"):
        await service.start_reply(ALICE, ASK)
    assert await store.get_message("c1", "a1") is None  # no row: nothing to end
    assert {status: replies_ended(status) for status in counted} == counted
    assert not upstream.asked.is_set()
    assert ROOM not in hub._rooms and service.replies_running() == 0


async def test_an_end_that_cannot_be_stored_is_logged_not_raised(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The placeholder is written, its end refused by the database (a real refusal:
    a trigger on a finished row): the caller still gets the reply's own error, the
    failure is logged, the row is left unfinished for start-up recovery, and the
    message is free again."""
    store, hub, upstream, service = gateway.store, gateway.hub, gateway.upstream, gateway.service
    await gateway.sqlite.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON messages WHEN NEW.done "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    started = asyncio.ensure_future(service.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    if upstream.crash:
        with pytest.raises(RuntimeError):  # not the store's refusal
            await started
    else:
        started.cancel()
        with pytest.raises(asyncio.CancelledError):
            await started
        await asyncio.wait_for(service.all_replies_ended(), 5)
    assert "the end of a reply that never ran was not stored" in caplog.text
    done, _, _ = await ended_as(store)
    assert done is False  # unfinished: start-up recovery ends it
    assert not service.replies.is_generating("c1", "a1")
    assert ROOM not in hub._rooms and service.replies_running() == 0


def replies_ended(status: str) -> float:
    return metrics.REGISTRY.get_sample_value("gateway_replies_total", {"status": status}) or 0.0


async def test_a_started_reply_its_request_never_read_leaves_the_hub(tmp_path: Path) -> None:
    """`Replies.start_reply`'s events are a generator: a request cancelled before
    their first step (while its response's headers are sent) closes them without
    their `finally`; the route's `Following.close()` still takes the outbox out of
    the hub.  A real model server client, in front of the fake one."""
    fake = FakeUpstream().start()
    store = await open_store("", tmp_path)
    try:
        question = MessageRecord("c1", "q1", None, "user", "Hello?")
        await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
        async with aiohttp.ClientSession() as session:
            hub = Hub(100)
            router = ModelRouter([OpenAIUpstream(fake.url, "", session, 5.0, None)], 60.0)
            service = ChatService(router, store, hub)
            replies = Replies(service, hub)
            ask = Ask(model="fake-model", messages=[], chat_id="c1", message_id="a1")
            following = await replies.start_reply(ALICE, ask)
            assert ROOM in hub._rooms
            await following.events.aclose()  # never started: its `finally` does not run
            following.close()
            assert ROOM not in hub._rooms
            await asyncio.wait_for(service.all_replies_ended(), 5)  # the reply itself ran on
        done, _, content = await ended_as(store)
        assert done is True and content.startswith("Fake reply to:")
    finally:
        await store.close()
        fake.stop()
