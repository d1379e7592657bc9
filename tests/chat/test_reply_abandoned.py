"""A backend-controlled reply (`ChatService.start_reply`) writes its placeholder,
then runs its reply, which opens its model server in its own task, and returns
once the model server answered (`starter.into`).  Whatever keeps it from running
— its caller leaving during the write or before the model server answered, a
stop meanwhile, a refusal, a bug — its placeholder is ended as the reply would
have ended, not left unfinished; the outbox it subscribed leaves the hub when
nobody will read it; the user's reply slot and the message are given back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import rooms
from gateway.application.replies import Replies, finished
from gateway.chat.running import StopTarget
from gateway.chat.service import ChatService
from gateway.commands import Ask
from gateway.edge import metrics
from gateway.edge.auth import Principal
from gateway.errors import Conflict, NotFound, RateLimited, UpstreamError
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


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, crash: bool) -> AsyncIterator[Gateway]:
    store = await open_store("", tmp_path)
    question = MessageRecord("c1", "q1", None, "user", "Hello?")
    await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
    upstream, hub = Upstream(crash=crash), Hub(100)
    router = ModelRouter([upstream], 60.0)
    service = ChatService(router, store, hub, max_replies_per_user=1)
    try:
        yield Gateway(store, hub, upstream, service)
    finally:
        await service.shutdown()
        await store.close()


@pytest.fixture(params=[False, True], ids=["hangs", "crashes"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, crash=request.param) as gateway:
        yield gateway


@pytest.fixture
async def hanging(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A model server that takes the request and never answers."""
    async with running_gateway(tmp_path, crash=False) as gateway:
        yield gateway


async def ended_as(store: Store) -> tuple[bool | None, dict[str, Any], str]:
    reply = await store.get_message("c1", "a1")
    assert reply is not None
    return reply.done, reply.fields, reply.content


async def test_a_reply_not_opened_ends_its_placeholder(gateway: Gateway) -> None:
    store, hub, upstream, service = gateway.store, gateway.hub, gateway.upstream, gateway.service
    started = asyncio.ensure_future(Replies(service, hub).start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    if upstream.crash:
        # A bug in the model server's client: the reply fails in its own events, as
        # one that failed later would (no error outside the client's protocol).
        following = await started
        with pytest.raises(UpstreamError, match="Internal error"):
            await finished(following.events)
        following.close()
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
    assert not service.replies.is_generating("c1", "a1")
    upstream.asked.clear()
    again = asyncio.ensure_future(service.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)  # asked again: its slot was given back
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_a_stop_reaches_a_reply_whose_model_server_has_not_answered(
    hanging: Gateway,
) -> None:
    """A model server that takes long to answer (a model being loaded): the reply
    is listed and a stop ends it, stored as stopped; its caller is answered with
    the stopped reply in its events; the slot and the message are free."""
    store, hub, upstream, service = hanging.store, hanging.hub, hanging.upstream, hanging.service
    replies = Replies(service, hub)
    started = asyncio.ensure_future(replies.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    assert not started.done()  # the caller waits for the model server's answer
    [task] = await service.replies.tasks(chat_id="c1")  # listed: Open WebUI's task list
    assert task.message_id == "a1"
    assert await replies.stop(StopTarget("alice", task_id=task.task_id)) == 1
    done, fields, content = await ended_as(store)  # stored before the stop returned
    assert done is True and fields.get("cancelled") is True and content == ""
    following = await asyncio.wait_for(started, 5)
    end, before = await finished(following.events)
    following.close()
    assert end.cancelled and end.content == "" and before == []
    assert ROOM not in hub._rooms and service.replies_running() == 0
    assert not service.replies.is_generating("c1", "a1")
    upstream.asked.clear()
    again = asyncio.ensure_future(service.start_reply(ALICE, ASK))  # not a 409, not a 429
    await asyncio.wait_for(upstream.asked.wait(), 5)
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_a_refusal_is_the_callers_error_and_ends_the_placeholder(
    gateway: Gateway,
) -> None:
    """An unknown model: the caller gets the refusal itself (a plain error in its
    route's shape), the placeholder ends failed with it, nothing is left held."""
    store, hub, service = gateway.store, gateway.hub, gateway.service
    with pytest.raises(NotFound):
        await Replies(service, hub).start_reply(ALICE, replace(ASK, model="no-such-model"))
    done, fields, _ = await ended_as(store)
    assert done is True and "no-such-model" in fields["error"]["content"]
    assert ROOM not in hub._rooms and service.replies_running() == 0
    assert not service.replies.is_generating("c1", "a1")


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
    a trigger on a finished row): the caller is answered as without it, the
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
        started_reply = await started  # the reply's own failure, in its events
        hub.unsubscribe(started_reply.outbox)
    else:
        started.cancel()
        with pytest.raises(asyncio.CancelledError):
            await started
    await asyncio.wait_for(service.all_replies_ended(), 5)
    assert "storing a reply's end failed" in caplog.text
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


async def test_a_second_reply_into_a_held_message_is_a_conflict_even_at_the_cap(
    hanging: Gateway,
) -> None:
    """One reply slot a user (`max_replies_per_user=1`), taken by a reply into a1
    whose model server has not answered: a second reply into a1 is told what is
    wrong (409: the message is being answered), not to wait for a slot (429); a
    reply into another message is the 429.  Neither writes anything."""
    store, upstream, service = hanging.store, hanging.upstream, hanging.service
    first = asyncio.ensure_future(service.start_reply(ALICE, ASK))
    await asyncio.wait_for(upstream.asked.wait(), 5)
    with pytest.raises(Conflict, match="already running"):
        await service.start_reply(ALICE, ASK)
    with pytest.raises(RateLimited):
        await service.start_reply(ALICE, replace(ASK, message_id="a2"))
    assert await store.get_message("c1", "a2") is None
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert service.replies_running() == 0


async def test_a_caller_that_leaves_during_the_write_its_end_refused_is_logged(
    hanging: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, with the stopped end refused by the database (a trigger on a
    finished row): logged, the row left for start-up recovery, the message free."""
    store, hub, service = hanging.store, hanging.hub, hanging.service
    db = hanging.sqlite
    await db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON messages WHEN NEW.done "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    async with thread_held(db):
        started = asyncio.ensure_future(service.start_reply(ALICE, ASK))
        await asyncio.sleep(0.05)
        hold = Hold(db)
    await hold.until_running()
    started.cancel()  # the caller leaves while the placeholder is being written
    await asyncio.sleep(0.05)
    await hold.release()
    with pytest.raises(asyncio.CancelledError):
        await started
    assert "storing a reply's end failed" in caplog.text and "refused" in caplog.text
    done, _, _ = await ended_as(store)
    assert done is False  # unfinished: start-up recovery ends it
    assert not service.replies.is_generating("c1", "a1")
    assert ROOM not in hub._rooms and service.replies_running() == 0


async def test_a_caller_that_leaves_once_the_model_server_answered_does_not_stop_it(
    tmp_path: Path,
) -> None:
    """The caller leaves in the moment between its model server's answer and its
    hearing of it: the reply runs on without it, as any answered reply does, and
    lands whole in the chat.  A real model server client in front of the fake one,
    the caller's leaving timed from inside it."""
    fake = FakeUpstream().start()
    store = await open_store("", tmp_path)
    caller: list[asyncio.Future[Any]] = []

    class LeftAtTheAnswer(OpenAIUpstream):
        async def open(
            self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
        ) -> Any:
            stream = await super().open(model, messages, params)
            caller[0].cancel()  # before the caller hears the model server answered
            return stream

    try:
        question = MessageRecord("c1", "q1", None, "user", "Hello?")
        await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
        async with aiohttp.ClientSession() as session:
            hub = Hub(100)
            upstream = LeftAtTheAnswer(fake.url, "", session, 5.0, None)
            service = ChatService(ModelRouter([upstream], 60.0), store, hub)
            ask = Ask(model="fake-model", messages=[], chat_id="c1", message_id="a1")
            caller.append(asyncio.ensure_future(service.start_reply(ALICE, ask)))
            with pytest.raises(asyncio.CancelledError):
                await caller[0]
            assert ROOM not in hub._rooms  # nobody will read its outbox
            await asyncio.wait_for(service.all_replies_ended(), 5)
            await service.shutdown()
        done, fields, content = await ended_as(store)
        assert done is True and "cancelled" not in fields
        assert content.startswith("Fake reply to:")
    finally:
        await store.close()
        fake.stop()
