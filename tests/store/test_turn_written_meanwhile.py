"""A turn's rows are written while its model server is asked (bench/RESULTS.md: the
write was most of a stored turn's own time before its first token), and nothing of
the reply reaches a client, or the store, before that write is done.

Real PostgreSQL, with the `chats` table locked by the test so that the gateway's
write of a new chat waits; a Nadoo socket asks; the fake model server records the
request.  Then either the lock goes (the reply arrives whole and is stored), or the
gateway's waiting write is made to fail (its connection killed): the client gets an
error frame, no delta, and the model server's request is closed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import websockets

from tests.fakes.upstream import FakeUpstream, Recorded
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import fresh_pg_database

TIMEOUT_S = 20


@pytest.fixture
async def database() -> AsyncIterator[str]:
    # Asked for before the gateway, so dropped after it has stopped.
    async with fresh_pg_database() as url:
        yield url


async def asked(fake: FakeUpstream, text: str) -> Recorded:
    """The model server's request for `text`, once it has come."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (found := fake.requests_for(text)):
        assert time.monotonic() < deadline, f"the model server was never asked {text!r}"
        await asyncio.sleep(0.01)
    return found[0]


async def frames_until_quiet(ws: Any, quiet_s: float) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
        except TimeoutError:
            return frames


async def nadoo_socket(gw: GatewayProcess, token: str) -> Any:
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/w-{uuid.uuid4().hex[:6]}?token={token}"
    ws = await websockets.connect(url)
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))["type"] == "connected"
    return ws


async def lock_chats(url: str) -> asyncpg.Connection:
    """A connection holding the `chats` table: the gateway's next insert waits."""
    holder = await asyncpg.connect(url)
    await holder.execute("BEGIN")
    await holder.execute("LOCK TABLE chats IN ACCESS EXCLUSIVE MODE")
    return holder


async def asking_while_locked(
    gw: GatewayProcess, database: str, who: str, question: str, model: str
) -> tuple[str, Any, asyncpg.Connection]:
    """A Nadoo socket that has asked `question` of `model` while the `chats` table is
    locked: (its token, the socket, the connection holding the lock)."""
    token = make_token(f"{who}-{uuid.uuid4().hex[:6]}")
    ws = await nadoo_socket(gw, token)
    holder = await lock_chats(database)
    await ws.send(json.dumps({"type": "chat", "content": question, "application_id": model}))
    return token, ws, holder


async def test_the_model_server_is_asked_while_the_turn_is_written(
    database: str, start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url, "DATABASE_URL": database})
    question = f"written meanwhile {uuid.uuid4().hex[:6]}"
    token, ws, holder = await asking_while_locked(gw, database, "writer", question, "fake-model")
    try:
        # Asked while the write waits for the lock ...
        request = await asked(fake_upstream, question)
        # ... and its whole reply (some 15 deltas 5 ms apart) has been sent by the model
        # server, but none of it has reached the client: the turn is not written yet.
        assert await asyncio.to_thread(request.ended.wait, TIMEOUT_S)
        early = await frames_until_quiet(ws, 0.3)
        assert not [f for f in early if f["type"] in ("text-delta", "response_end", "error")], early
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    frames = early + await frames_until_quiet(ws, 2.0)
    await ws.close()
    expected = f"Fake reply to: {question}"
    deltas = "".join(f["text"] for f in frames if f["type"] == "text-delta")
    end = next(f for f in frames if f["type"] == "response_end")
    assert deltas == expected and end["full_response"] == expected
    # Stored: the chat reads back with the reply.
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/chats/{end['chat_id']}", headers=headers) as resp:
            assert resp.status == 200
            chat = (await resp.json())["chat"]
    assert chat["history"]["messages"][end["message_id"]]["content"] == expected


async def test_a_turn_whose_write_fails_closes_its_model_request_and_sends_nothing_of_it(
    database: str, start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url, "DATABASE_URL": database})
    question = f"never written {uuid.uuid4().hex[:6]}"
    # fake-crawl streams for 15 s: its request is open when the write fails.
    token, ws, holder = await asking_while_locked(gw, database, "unwritten", question, "fake-crawl")
    try:
        request = await asked(fake_upstream, question)
        killed = await holder.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock'"
        )
        assert killed == 1
        # The model server's request is closed at once, long before its reply's end.
        assert await asyncio.to_thread(request.ended.wait, 5)
        assert request.disconnected and not request.finished
        frames = await frames_until_quiet(ws, 1.0)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    kinds = [f["type"] for f in frames]
    assert "text-delta" not in kinds and "response_end" not in kinds, frames
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) == 1 and "Traceback" not in json.dumps(errors[0]), frames
    # The socket still works: the next turn is answered and stored.
    await ws.send(json.dumps({"type": "chat", "content": "again", "application_id": "fake-model"}))
    after = await frames_until_quiet(ws, 2.0)
    await ws.close()
    end = next(f for f in after if f["type"] == "response_end")
    assert end["full_response"] == "Fake reply to: again"
    # Nothing of the failed turn is listed in the user's chats.
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/chats/", headers=headers) as resp:
            titles = [chat["title"] for chat in await resp.json()]
    assert not [title for title in titles if question in title], titles
