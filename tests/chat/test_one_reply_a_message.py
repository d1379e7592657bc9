"""One reply at a time into a message (`RunningReplies.claim`).  Two replies into
one row would each write it, and the one that ended last would overwrite the
other's answer: a second reply into a message whose reply is being started or
runs on this replica is refused (`Conflict`, 409) before anything is written, in
backend-controlled mode (`start_reply`) and in frontend mode (a turn answering
into an existing placeholder: the web app's "continue").  The message is free
again once its reply's end is stored, before that end goes out, so a client
that answers into it again as soon as it has the end is not refused.

A real model server client in front of the fake model server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest

from gateway import rooms
from gateway.chat.running import StopTarget
from gateway.chat.service import ChatService
from gateway.commands import Ask, ReplyTarget
from gateway.edge.auth import Principal
from gateway.errors import Conflict, RateLimited
from gateway.events import Event, ReplyFailed, ReplyFinished
from gateway.fanout.hub import Hub
from gateway.fanout.outbox import Outbox
from gateway.store import ChatRecord, MessageRecord, Store, open_store
from gateway.store.drivers import SQLiteDriver
from gateway.upstream.openai import OpenAIUpstream
from gateway.upstream.router import ModelRouter
from tests.fakes.upstream import FakeUpstream
from tests.store.held import Hold, sqlite_of, thread_held

ALICE = Principal("alice", "Alice")
SLOW = Ask(model="fake-slow", messages=[], chat_id="c1", message_id="a1")
QUICK = Ask(model="fake-model", messages=[], chat_id="c1", message_id="a1")
IN_A1 = {"chat_id": "c1", "message_id": "a1"}
# The web app's "continue": a turn whose question exists, answered into a1 again.
CONTINUE = Ask(
    model="fake-model",
    messages=[],
    chat_id="c1",
    parent_id=None,
    user_message={"id": "q1", "parentId": None, "role": "user", "content": "Hello?"},
    targets=(ReplyTarget("a1", "fake-model"),),
)


@dataclass
class Gateway:
    store: Store
    hub: Hub
    service: ChatService
    fake: FakeUpstream

    @property
    def sqlite(self) -> SQLiteDriver:
        return sqlite_of(self.store)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    fake = FakeUpstream().start()
    store = await open_store("", tmp_path)
    question = MessageRecord("c1", "q1", None, "user", "Hello?")
    await store.insert_chat(ChatRecord("c1", "alice", "Hi", "q1", 100, 100), [question])
    try:
        async with aiohttp.ClientSession() as session:
            hub = Hub(100)
            router = ModelRouter([OpenAIUpstream(fake.url, "", session, 5.0, None)], 60.0)
            service = ChatService(router, store, hub, max_replies_per_user=4)
            yield Gateway(store, hub, service, fake)
            await service.replies.stop(StopTarget("alice"))
            await asyncio.wait_for(service.all_replies_ended(), 10)
    finally:
        await store.close()
        fake.stop()


async def end_of(outbox: Outbox) -> Event:
    """The end of the reply an outbox follows."""

    async def ended() -> Event:
        async for event in outbox:
            if isinstance(event, ReplyFinished | ReplyFailed):
                return event
        raise AssertionError("the outbox closed before the reply's end")

    return await asyncio.wait_for(ended(), 10)


async def reply_row(store: Store) -> MessageRecord:
    record = await store.get_message("c1", "a1")
    assert record is not None
    return record


async def test_a_reply_into_a_message_being_answered_is_refused(gateway: Gateway) -> None:
    store, service = gateway.store, gateway.service
    first = await service.start_reply(ALICE, SLOW)
    with pytest.raises(Conflict, match="already running"):
        await service.start_reply(ALICE, QUICK)
    with pytest.raises(Conflict, match="already running"):
        await service.start_turn(ALICE, CONTINUE)
    assert service.replies_running() == 1  # the refused ones' slots given back
    assert service.replies.is_generating("c1", "a1")
    row = await reply_row(store)
    assert row.done is False and row.fields["model"] == "fake-slow"  # nothing of theirs written

    ended = await end_of(first.outbox)
    assert isinstance(ended, ReplyFinished) and ended.content
    row = await reply_row(store)
    assert row.done is True and row.content == ended.content  # the first's answer, whole
    assert not service.replies.is_generating("c1", "a1")
    again = await service.start_reply(ALICE, QUICK)  # free again
    end = await end_of(again.outbox)
    assert isinstance(end, ReplyFinished)
    assert (await reply_row(store)).content == end.content


async def test_of_two_replies_started_at_once_into_a_message_one_is_refused(
    gateway: Gateway,
) -> None:
    store, service = gateway.store, gateway.service
    results = await asyncio.gather(
        service.start_reply(ALICE, SLOW),
        service.start_reply(ALICE, QUICK),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Conflict)]
    started = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) == 1 and len(started) == 1, results
    end = await end_of(started[0].outbox)
    assert isinstance(end, ReplyFinished)
    row = await reply_row(store)
    assert row.done is True and row.content == end.content


async def test_a_message_is_free_before_its_end_goes_out(gateway: Gateway) -> None:
    """What a client that has the end may do at once: the end is delivered (the
    outbox's fast path, in the publish itself) after the message is let go."""
    hub, service = gateway.hub, gateway.service
    seen: list[bool] = []

    def deliver(event: Event) -> bool:
        if isinstance(event, ReplyFinished | ReplyFailed):
            seen.append(service.replies.is_generating("c1", "a1"))
        return True

    hub.subscribe([rooms.reply("c1", "a1")], deliver=deliver)
    await service.start_reply(ALICE, QUICK)
    await asyncio.wait_for(service.all_replies_ended(), 10)
    assert seen == [False]


async def test_a_reply_that_never_started_frees_its_message_once_ended(
    gateway: Gateway,
) -> None:
    """An unknown model: the placeholder is written, then ended as failed; the
    message is held until that end is stored, then free."""
    store, service = gateway.store, gateway.service
    with pytest.raises(Exception, match="not-a-model"):
        await service.start_reply(ALICE, Ask(model="not-a-model", messages=[], **IN_A1))
    row = await reply_row(store)
    assert row.done is True and "error" in row.fields
    assert not service.replies.is_generating("c1", "a1")
    started = await service.start_reply(ALICE, QUICK)
    assert isinstance(await end_of(started.outbox), ReplyFinished)


async def test_a_turn_refused_for_the_users_cap_holds_no_message(gateway: Gateway) -> None:
    """The messages a turn holds are let go when its slots are refused (the user's
    cap of replies at once, 4 here): the same turn, asked again later, runs."""
    service = gateway.service
    for n in range(4):
        await service.start_reply(ALICE, replace(SLOW, message_id=f"a{n}"))
    into_a9 = replace(CONTINUE, targets=(ReplyTarget("a9", "fake-model"),))
    with pytest.raises(RateLimited):
        await service.start_turn(ALICE, into_a9)
    assert not service.replies.is_generating("c1", "a9")
    await service.replies.stop(StopTarget("alice"))
    await asyncio.wait_for(service.all_replies_ended(), 10)
    started = await service.start_turn(ALICE, into_a9)
    assert started.message_ids == ["a9"]


@pytest.mark.parametrize("stops", [1, 2], ids=["a stop", "two stops"])
async def test_a_message_stopped_while_its_end_is_stored_is_held_until_stored(
    gateway: Gateway, stops: int
) -> None:
    """A reply whose end is being stored (the database's thread held), then stopped
    (once, or twice: a second click): the stop returns, and the message is free,
    only once that end is stored; an answer into it then is not overwritten by it."""
    store, service = gateway.store, gateway.service
    first = await service.start_reply(ALICE, QUICK)
    async with thread_held(gateway.sqlite):
        await asyncio.sleep(0.5)  # its few deltas are in: its end waits for the thread
        stopping = [asyncio.ensure_future(service.replies.stop(StopTarget("alice")))]
        await asyncio.sleep(0.05)
        if stops == 2:
            stopping.append(asyncio.ensure_future(service.replies.stop(StopTarget("alice"))))
            await asyncio.sleep(0.05)
        assert not any(stop.done() for stop in stopping)  # the end is not stored yet
        assert service.replies.is_generating("c1", "a1")
    await asyncio.wait_for(asyncio.gather(*stopping), 10)
    assert not service.replies.is_generating("c1", "a1")
    end = await end_of(first.outbox)
    assert isinstance(end, ReplyFinished) and end.content  # it had finished: kept whole
    row = await reply_row(store)
    assert row.done is True and row.content == end.content
    again = await service.start_reply(ALICE, SLOW)
    assert isinstance(await end_of(again.outbox), ReplyFinished)
    row = await reply_row(store)
    assert row.fields["model"] == "fake-slow" and row.content != end.content


async def test_a_reply_that_never_started_holds_its_message_until_its_end_is_stored(
    gateway: Gateway,
) -> None:
    """The model list is slow to come and the model unknown: the placeholder is
    written, then, while the database's thread is held, its end waits, and so does
    the message."""
    gateway.fake.models_delay_s = 0.3
    service = gateway.service
    asking = asyncio.ensure_future(
        service.start_reply(ALICE, Ask(model="not-a-model", messages=[], **IN_A1))
    )
    await asyncio.sleep(0.15)  # the placeholder is written; the model list is awaited
    hold = Hold(gateway.sqlite)
    await hold.until_running()
    await asyncio.sleep(0.4)  # the model is found unknown: its end waits for the thread
    assert not asking.done()
    assert service.replies.is_generating("c1", "a1")
    await hold.release()
    with pytest.raises(Exception, match="not-a-model"):
        await asking
    assert not service.replies.is_generating("c1", "a1")
    assert (await reply_row(gateway.store)).done is True
