"""The lists of whole chats (`/api/v1/chats/all`, `/all/archived`, `/folder/{id}`),
written a chat at a time (`api/common.py` `json_array`): with the CORS headers a
buffered answer has, and a failure past the first chat cuts the connection (no
second status written into the body, nothing that reads as a whole list).  On the
real app served in-process, the failure made in its chat service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from gateway.app import GATEWAY, build_app
from gateway.application.keys import CHATS
from gateway.errors import DatabaseDown
from gateway.settings import Settings
from tests.gatewayproc import SECRET, make_token, served_in_process

APP_ORIGIN = "https://app.example"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[web.Application, str]]:
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, cors_allow_origin=[APP_ORIGIN])
    app = build_app(settings)
    async with served_in_process(app) as base:
        yield app.get(GATEWAY, app), base


async def made(http: aiohttp.ClientSession, base: str, count: int) -> None:
    for i in range(count):
        body = {"chat": {"title": f"chat {i}"}}
        async with http.post(f"{base}/api/v1/chats/new", json=body) as resp:
            assert resp.status == 200


async def test_a_streamed_list_has_the_cors_headers_of_an_empty_one(
    served: tuple[web.Application, str],
) -> None:
    _, base = served
    headers = {"Authorization": f"Bearer {make_token('lister')}", "Origin": APP_ORIGIN}
    async with aiohttp.ClientSession(headers=headers) as http:
        for count in (0, 3):
            await made(http, base, count)
            async with http.get(f"{base}/api/v1/chats/all") as resp:
                assert resp.status == 200
                assert resp.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN
                assert len(await resp.json()) == count


async def test_a_failure_past_the_first_chat_cuts_the_connection(
    served: tuple[web.Application, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, base = served
    token = make_token("cut-lister")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        await made(http, base, 3)
    book = app[CHATS].book
    answered = book.response
    calls: list[int] = []

    async def failing(chat: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise DatabaseDown()
        return await answered(chat)

    monkeypatch.setattr(book, "response", failing)
    # Raw bytes: what the client really gets.
    where = urlsplit(base)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(
        f"GET /api/v1/chats/all HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # to the end: the connection is cut
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    assert b"HTTP/1.1" not in body  # no second status inside the body
    assert not body.endswith(b"0\r\n\r\n")  # not ended as a whole body
    assert b'"title":"chat' in body and b"]" not in body.rsplit(b"}", 1)[-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(b"".join(body.split(b"\r\n")[1::2]))
