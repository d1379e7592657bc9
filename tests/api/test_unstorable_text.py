"""No text makes a route fail, on SQLite and on PostgreSQL (issue 15).

A lone UTF-16 surrogate (JSON "\\ud800") cannot be encoded as UTF-8 for either
database, and PostgreSQL refuses NUL; both answered 500 (and the user's message
was lost), and SQLite kept the NUL.  As Open WebUI does, both are stripped before
storing (`gateway/text.py`), in one place for every route and flavour: the
database drivers; where a JSON body is read too, so what a route answers is what
it stored.  Hypothesis throws strings full of them, and of other control
characters, at the real routes of a real gateway on each store.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clients import PySocket
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import pg_database

NASTY = ["\x00", "\ud800", "\udfff", "\ud83d", "\ude00", "\x01", "\x1f", "\x7f", "\u2028", "\ufeff"]
TEXTS = st.text(
    st.one_of(st.sampled_from(NASTY), st.characters(blacklist_categories=())), max_size=12
)


@pytest.fixture(scope="module")
def pg_gateway(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with pg_database() as url:
        env = {"OPENAI_API_BASE_URL": fake_upstream.url, "DATABASE_URL": url}
        proc = GatewayProcess(tmp_path_factory.mktemp("gw-pg"), env).start()
        try:
            yield proc
        finally:
            proc.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(
    request: pytest.FixtureRequest, gateway: GatewayProcess, pg_gateway: GatewayProcess
) -> GatewayProcess:
    return gateway if request.param == "sqlite" else pg_gateway


def unstorable(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL or a lone surrogate anywhere."""
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(unstorable(k) or unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(unstorable(v) for v in value)
    return False


def call(gateway: GatewayProcess, token: str, method: str, path: str, body: Any = None) -> Any:
    """One request; fails the test on a 5xx; the parsed answer (None if not 2xx)."""
    data = None if body is None else json.dumps(body).encode()  # \ud800 as an escape
    request = urllib.request.Request(
        gateway.url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        assert exc.code < 500, (method, path, exc.code, exc.read()[:300])
        return None


def quoted(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=TEXTS)
def test_no_text_makes_a_route_fail(any_store: GatewayProcess, text: str) -> None:
    token = make_token(f"text-{uuid.uuid4().hex[:8]}")
    chat = {
        "title": text,
        "history": {
            "currentId": "a1",
            "messages": {
                "u1": {"id": "u1", "role": "user", "content": text, text: text},
                "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": text},
            },
        },
        text: [text, {text: text}],
    }
    created = call(any_store, token, "POST", "/api/v1/chats/new", {"chat": chat})
    assert created is not None and not unstorable(created)
    cid = created["id"]
    update = {"chat": {"title": text + "!", "history": {"messages": {"u1": {"content": text}}}}}
    assert not unstorable(call(any_store, token, "POST", f"/api/v1/chats/{cid}", update))
    message = {"content": text + "?", "note": text}
    assert not unstorable(
        call(any_store, token, "POST", f"/api/v1/chats/{cid}/messages/a1", message)
    )
    tags = call(any_store, token, "POST", f"/api/v1/chats/{cid}/tags", {"name": "t" + text})
    assert tags is not None and not unstorable(tags)
    call(any_store, token, "PATCH", f"/api/v1/chats/{cid}/params", {text: text})
    call(any_store, token, "GET", f"/api/v1/chats/search?text={quoted(text)}")
    call(any_store, token, "GET", f"/api/v1/chats/{quoted(text) or 'x'}")
    call(any_store, token, "POST", "/api/v1/chats/tags", {"name": "t" + text})
    # The web app's turn: the user's message must not be lost.
    turn = {
        "model": "fake-model",
        "session_id": "no-socket",
        "id": str(uuid.uuid4()),
        "parent_id": None,
        "user_message": {"id": str(uuid.uuid4()), "role": "user", "content": text, text: 1},
    }
    started = call(any_store, token, "POST", "/api/chat/completions", turn)
    assert started is not None and started["status"] is True
    stored = call(any_store, token, "GET", f"/api/v1/chats/{started['chat_id']}")
    assert stored is not None and not unstorable(stored)
    user = stored["chat"]["history"]["messages"][turn["user_message"]["id"]]
    expected = text.replace("\x00", "")
    expected = "".join(c for c in expected if not "\ud800" <= c <= "\udfff")
    assert user["content"] == expected
    assert not unstorable(call(any_store, token, "GET", f"/api/v1/chats/{cid}"))
    assert not unstorable(call(any_store, token, "GET", "/api/v1/chats/all/tags"))


BAD = "a\x00b\ud800c\udfff😀"


async def test_raw_websocket_and_socketio_text_is_stored_clean(
    any_store: GatewayProcess, tmp_path: Path
) -> None:
    log_start = len(any_store.log())
    token = make_token(f"ws-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {token}"}
    ws_url = any_store.url.replace("http", "ws", 1)
    async with aiohttp.ClientSession() as session:
        # Nadoo: a chat frame whose text has a NUL and lone surrogates (as JSON escapes).
        async with session.ws_connect(f"{ws_url}/ws/chat/s1?token={token}") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "connected"
            await ws.send_str(json.dumps({"type": "chat", "content": BAD}))
            chat_id = None
            while True:
                frame = await ws.receive_json(timeout=20)
                assert frame["type"] != "error", frame
                chat_id = frame.get("chat_id") or chat_id
                if frame["type"] == "response_end":
                    break
        async with session.get(f"{any_store.url}/api/v1/chats/{chat_id}", headers=headers) as r:
            assert r.status == 200
            stored = await r.json()
        assert not unstorable(stored)
        contents = [m["content"] for m in stored["chat"]["messages"]]
        assert contents[0] == "abc😀"
    # Socket.IO: a chat id with a NUL in `events:chat` is no chat, not a failure.
    sock = await PySocket().connect(any_store.url, token)
    try:
        for kind in ("join", "last_read_at"):
            ack = await sock.client.call(
                "events:chat", {"chat_id": "\x00" + chat_id, "data": {"type": kind}}, timeout=10
            )
            assert ack in (None, False, True)
        await asyncio.sleep(0.1)
    finally:
        await sock.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{any_store.url}/health") as r:
            assert r.status == 200
    assert "Traceback" not in any_store.log()[log_start:]
