"""What a probe of Open WebUI's REST API found (2026-12-07), each on a real gateway,
each with what the code did before:

    two edits of one chat at once (two siblings each moved under the other; a
    message's text and its rating)
        was: both read the same tree, each wrote what the other had not seen: a
             parentId cycle stored, or one of the two fields lost
        now: one at a time per chat: the second move is refused (400, a cycle),
             both fields are kept
    a parentId cycle or a missing parent already in the store (written there by
    hand, as two replicas writing at once could leave it)
        was: the chat, and every chat list holding it, a 500
        now: the message reads as a root: the chat reads (a tree, its flat
             `messages` the path to currentId), lists, renames and is edited
    an edit of a message while its reply is being generated
        was: taken, then overwritten by the reply's end
        now: 409 with a `detail` (the question beside it may be edited); once the
             reply has ended it is the model's text, and an edit then is 200
    a rename of a chat of 40,000 replies under one message (childrenIds as the
    web app sends them)
        was: childrenIds ordered in quadratic time, on the event loop: every
             other user's request waited out the rename's merge (20 s)
        now: merged in a thread: another user's requests are answered while the
             rename is under way (held at its write by a lock the test takes)
    `/api/v1/auths/`
        was: a new 7-day JWT each call, also for an API key (which outlived the
             key's revocation)
        now: the caller's own token: a JWT with its `exp` (or null), an API key as
             itself, refused (401) once the key is deleted
    a user of role `pending`
        was: let in everywhere
        now: signs in, reads its session and the web app's config; refused (401,
             the account is pending) by the chat routes, the OpenAI route,
             Socket.IO's authentication and the Nadoo socket (1008)
    a 10,000-character name, an address like `@` or `a@`, a 3 MB tag
        was: taken (the name made a token no request could carry; the tag made
             every tag list 6 MB)
        now: 400 past 256, 254 and 100 characters (LIMITS.md), or without a
             local part and a domain
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Mapping
from contextlib import closing
from typing import Any, NamedTuple

import aiohttp
import jwt
import pytest
import websockets

from tests.api.test_nadoo_ws import ws_url
from tests.clients import PySocket, ended, get_json, post_json, turn_body
from tests.fakes.upstream import deltas_of
from tests.gatewayproc import GatewayProcess, make_token

CHATS = "/api/v1/chats"
AUTHS = "/api/v1/auths"
# The gateway's request body limit (GATEWAY_MAX_REQUEST_BODY_BYTES' default).
MAX_BODY_BYTES = 4 * 1024 * 1024


class Reply(NamedTuple):
    status: int
    body: Any
    text: str
    set_cookies: list[str]


async def call(
    method: str,
    url: str,
    token: str | None,
    body: Any = None,
    session: aiohttp.ClientSession | None = None,
) -> Reply:
    """One request, its status and body as they came (the JSON read when there is any)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            data = json.loads(text) if text else None
            return Reply(resp.status, data, text, resp.headers.getall("Set-Cookie", []))
    finally:
        if own:
            await http.close()


def new_user(prefix: str) -> str:
    """A JWT for a user not seen before (made just in time by its first request)."""
    return make_token(f"{prefix}-{uuid.uuid4().hex[:8]}")


def message(mid: str, parent: str | None, content: str = "", **fields: Any) -> dict[str, Any]:
    role = "assistant" if parent is not None else "user"
    return {"id": mid, "parentId": parent, "role": role, "content": content, **fields}


async def new_chat(
    gw: GatewayProcess, token: str, messages: list[dict[str, Any]], current: str
) -> str:
    """A chat made over REST with these messages (childrenIds derived from parentId)."""
    history = {"currentId": current, "messages": {m["id"]: m for m in messages}}
    made = await post_json(
        f"{gw.url}{CHATS}/new", token, {"chat": {"title": "probe", "history": history}}
    )
    return str(made["id"])


def assert_a_tree(chat: Mapping[str, Any]) -> list[str]:
    """The chat's history is a tree (parentId and childrenIds agree, no cycle) and its
    flat `messages` is the path from a root to currentId: that path's ids."""
    history = chat["chat"]["history"]
    messages = history["messages"]
    for mid, msg in messages.items():
        parent = msg["parentId"]
        if parent is not None:
            assert mid in messages[parent]["childrenIds"], (mid, parent)
        for child in msg["childrenIds"]:
            assert messages[child]["parentId"] == mid, (mid, child)
    path: list[str] = []
    node = history["currentId"]
    while node is not None:
        assert node not in path, f"a parentId cycle through {node!r}"
        path.append(node)
        node = messages[node]["parentId"]
    path.reverse()
    assert [m["id"] for m in chat["chat"]["messages"]] == path
    return path


# -- 1. two edits of one chat at once ------------------------------------------------------
async def siblings_moved_under_each_other(
    first: GatewayProcess, second: GatewayProcess, token: str, rounds: int
) -> None:
    """Two siblings moved under each other at once, one move through each gateway:
    one is made, the other (it would close a cycle) refused, and the chat reads as
    a tree on both."""
    for _ in range(rounds):
        chat_id = await new_chat(
            first, token, [message("r", None, "q"), message("a", "r"), message("b", "r")], "a"
        )
        a_under_b, b_under_a = await asyncio.gather(
            call("POST", f"{first.url}{CHATS}/{chat_id}/messages/a", token, {"parentId": "b"}),
            call("POST", f"{second.url}{CHATS}/{chat_id}/messages/b", token, {"parentId": "a"}),
        )
        assert sorted([a_under_b.status, b_under_a.status]) == [200, 400], (a_under_b, b_under_a)
        refused = a_under_b if a_under_b.status == 400 else b_under_a
        assert "cycle" in refused.body["detail"]
        for gw in {first, second}:
            chat = await get_json(f"{gw.url}{CHATS}/{chat_id}", token)
            parents = {mid: m["parentId"] for mid, m in chat["chat"]["history"]["messages"].items()}
            assert parents in ({"r": None, "a": "b", "b": "r"}, {"r": None, "a": "r", "b": "a"})
            assert_a_tree(chat)
            assert chat_id in [c["id"] for c in await get_json(f"{gw.url}{CHATS}/all", token)]


async def a_text_and_a_rating_at_once(
    first: GatewayProcess, second: GatewayProcess, token: str, rounds: int
) -> None:
    """A message's text through one gateway and its rating through the other, at once:
    both kept."""
    for round_ in range(rounds):
        chat_id = await new_chat(
            first, token, [message("q", None, "question"), message("x", "q", "old")], "x"
        )
        text = f"NEW {round_}"
        edits = await asyncio.gather(
            call("POST", f"{first.url}{CHATS}/{chat_id}/messages/x", token, {"content": text}),
            call(
                "POST",
                f"{second.url}{CHATS}/{chat_id}/messages/x",
                token,
                {"annotation": {"rating": 1}},
            ),
        )
        assert [edit.status for edit in edits] == [200, 200], edits
        stored = await get_json(f"{second.url}{CHATS}/{chat_id}", token)
        x = stored["chat"]["history"]["messages"]["x"]
        assert (x["content"], x.get("annotation")) == (text, {"rating": 1})


async def test_two_siblings_moved_under_each_other_at_once_store_no_cycle(
    gateway: GatewayProcess,
) -> None:
    await siblings_moved_under_each_other(gateway, gateway, new_user("rest-moves"), 10)


async def test_a_text_and_a_rating_sent_at_once_are_both_kept(gateway: GatewayProcess) -> None:
    await a_text_and_a_rating_at_once(gateway, gateway, new_user("rest-fields"), 20)


# -- 2. a cycle or a missing parent in the store --------------------------------------------
def write_to_store(gw: GatewayProcess, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Statements run straight on the gateway's SQLite file while it runs (WAL)."""
    with closing(sqlite3.connect(gw.data_dir / "gateway.db", timeout=10)) as db, db:
        for sql, args in statements:
            db.execute(sql, args)


async def assert_read_renamed_and_edited(
    gw: GatewayProcess, token: str, chat_id: str, edit: str
) -> dict[str, Any]:
    """The chat reads as a tree, is listed, renamed and one message edited: the chat read
    first."""
    url = f"{gw.url}{CHATS}/{chat_id}"
    chat: dict[str, Any] = await get_json(url, token)
    assert_a_tree(chat)
    assert chat_id in [c["id"] for c in await get_json(f"{gw.url}{CHATS}/all", token)]
    renamed = await post_json(url, token, {"chat": {"title": "renamed after the damage"}})
    assert renamed["title"] == "renamed after the damage"
    await post_json(f"{url}/messages/{edit}", token, {"content": "edited after the damage"})
    after = await get_json(url, token)
    assert after["title"] == "renamed after the damage"
    assert after["chat"]["history"]["messages"][edit]["content"] == "edited after the damage"
    assert_a_tree(after)
    return chat


async def test_a_stored_cycle_or_missing_parent_reads_as_a_root(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway()
    token = new_user("rest-damaged")
    # r ← a ← b, then r's parent set to b in the store: r → b → a → r.
    looped = await new_chat(
        gw, token, [message("r", None, "q"), message("a", "r", "1"), message("b", "a", "2")], "b"
    )
    write_to_store(
        gw, ("UPDATE messages SET parent_id = 'b' WHERE chat_id = ? AND id = 'r'", (looped,))
    )
    chat = await assert_read_renamed_and_edited(gw, token, looped, "r")
    messages = chat["chat"]["history"]["messages"]
    assert len(messages) == 3
    assert chat["chat"]["history"]["currentId"] == "b"
    assert [m for m in messages.values() if m["parentId"] is None] != []

    # A row whose parent is missing, made the chat's current message.
    orphaned = await new_chat(gw, token, [message("r", None, "q"), message("a", "r", "1")], "a")
    write_to_store(
        gw,
        (
            "INSERT INTO messages (chat_id, id, parent_id, role, content, done, fields, draft, "
            "position) VALUES (?, 'o', 'ghost', 'assistant', 'orphan', NULL, '{}', NULL, "
            "(SELECT MAX(position) + 1 FROM messages WHERE chat_id = ?))",
            (orphaned, orphaned),
        ),
        ("UPDATE chats SET current_id = 'o' WHERE id = ?", (orphaned,)),
    )
    chat = await assert_read_renamed_and_edited(gw, token, orphaned, "o")
    assert chat["chat"]["history"]["messages"]["o"]["parentId"] is None
    assert [m["id"] for m in chat["chat"]["messages"]] == ["o"]
    assert chat["chat"]["messages"][0]["content"] == "orphan"


# -- 3. a message being generated ------------------------------------------------------------
async def test_a_reply_being_generated_cannot_be_edited(gateway: GatewayProcess) -> None:
    token = new_user("rest-generating")
    sock = await PySocket().connect(gateway.url, token)
    try:
        # fake-slow: 64 deltas 20 ms apart, so the reply is still running below.
        body = turn_body(sock.sid, "a slow one", model="fake-slow")
        reply_id, question_id = body["id"], body["user_message"]["id"]
        answer = await post_json(f"{gateway.url}/api/chat/completions", token, body)
        url = f"{gateway.url}{CHATS}/{answer['chat_id']}"
        await sock.wait_until(
            lambda events: any(
                e["message_id"] == reply_id and e["type"] == "chat:message:delta" for e in events
            )
        )
        refused = await call("POST", f"{url}/messages/{reply_id}", token, {"content": "too soon"})
        assert refused.status == 409 and "being generated" in refused.body["detail"], refused
        # Nor deleted, alone or with the question it answers.
        for mid in (reply_id, question_id):
            refused = await call("DELETE", f"{url}/messages/{mid}", token)
            assert refused.status == 409 and "being generated" in refused.body["detail"], refused
        # The question beside it is not being generated: it may be edited meanwhile.
        await post_json(f"{url}/messages/{question_id}", token, {"content": "a slow one, edited"})
        assert not any(map(ended, sock.events)), "the reply ended before the edits"
        await sock.wait_ended()
    finally:
        await sock.close()
    stored = (await get_json(url, token))["chat"]["history"]["messages"]
    assert stored[reply_id]["content"] == "".join(deltas_of("fake-slow", "")).strip()
    assert stored[question_id]["content"] == "a slow one, edited"
    await post_json(f"{url}/messages/{reply_id}", token, {"content": "edited once ended"})
    stored = (await get_json(url, token))["chat"]["history"]["messages"]
    assert stored[reply_id]["content"] == "edited once ended"


async def test_a_reply_being_generated_is_not_moved_by_a_deletion_above_it(
    gateway: GatewayProcess,
) -> None:
    # Deleting the first answer moves the second turn's reply up; while it is
    # generated, its end would be written under its old parent, deleted by then.
    token = new_user("rest-moved")
    sock = await PySocket().connect(gateway.url, token)
    try:
        first = turn_body(sock.sid, "first")
        chat_id = (await post_json(f"{gateway.url}/api/chat/completions", token, first))["chat_id"]
        await sock.wait_ended()
        second = turn_body(
            sock.sid, "second", model="fake-slow", chat_id=chat_id, parent_id=first["id"]
        )
        await post_json(f"{gateway.url}/api/chat/completions", token, second)
        url = f"{gateway.url}{CHATS}/{chat_id}"
        refused = await call("DELETE", f"{url}/messages/{first['id']}", token)
        assert refused.status == 409 and "being generated" in refused.body["detail"], refused
        await sock.wait_ended(2)
    finally:
        await sock.close()
    deleted = await call("DELETE", f"{url}/messages/{first['id']}", token)
    assert deleted.status == 200
    messages = deleted.body["chat"]["history"]["messages"]
    assert messages[second["id"]]["parentId"] == first["user_message"]["id"]


# -- 4. a big chat's rename and another user's requests ----------------------------------------
REPLIES = 40_000


def big_chat_body() -> bytes:
    """One question with REPLIES replies under it, each with its childrenIds as the web
    app sends them (the question's listing every reply), as compact JSON."""
    ids = [f"m{i}" for i in range(REPLIES)]
    messages = {"q": {**message("q", None, "many answers"), "childrenIds": ids}}
    for mid in ids:
        messages[mid] = {**message(mid, "q"), "childrenIds": []}
    chat = {"title": "big", "history": {"currentId": ids[-1], "messages": messages}}
    return json.dumps({"chat": chat}, separators=(",", ":")).encode()


class WritesHeld:
    """A write transaction the test holds on the gateway's SQLite file: the gateway
    reads on (WAL), but its next write waits (its busy timeout: 10 s) until `release`."""

    def __init__(self, gw: GatewayProcess) -> None:
        self._db = sqlite3.connect(gw.data_dir / "gateway.db", timeout=10, isolation_level=None)
        self._db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._db.close()


async def test_a_big_chats_rename_does_not_hold_up_another_users_requests(
    start_gateway: Any,
) -> None:
    """While a rename of a chat of 40,000 messages runs, another user's chat list and
    /health are answered: the rename's write is held back (by the test's lock on the
    store) until they have been, and only then is the rename answered, 200.  Before,
    the rename walked the tree on the loop: nothing else was answered until its merge
    had ended (20 s), and the chat list, which reads the store, then waited behind the
    held write."""
    gw: GatewayProcess = start_gateway()
    owner, other = new_user("rest-big"), new_user("rest-other")
    raw = big_chat_body()
    assert len(raw) < MAX_BODY_BYTES
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {owner}", "Content-Type": "application/json"}
        async with http.post(f"{gw.url}{CHATS}/new", data=io.BytesIO(raw), headers=headers) as resp:
            assert resp.status == 200
            chat_id = (await resp.json())["id"]
    # The other user, and a chat of theirs, exist before the store is held.
    other_chat = await new_chat(gw, other, [message("q", None, "mine")], "q")

    finished: list[str] = []
    rename_sent = asyncio.Event()

    async def on_sent(*_: Any) -> None:
        rename_sent.set()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(on_sent)

    async def rename() -> Reply:
        async with aiohttp.ClientSession(trace_configs=[tracing]) as http:
            done = await call(
                "POST",
                f"{gw.url}{CHATS}/{chat_id}",
                owner,
                {"chat": {"title": "big, renamed"}},
                http,
            )
        finished.append("rename")
        return done

    async def request(name: str, path: str, token: str | None) -> Reply:
        done = await call("GET", f"{gw.url}{path}", token)
        finished.append(name)
        return done

    held = WritesHeld(gw)
    try:
        renaming = asyncio.create_task(rename())
        await rename_sent.wait()
        others = asyncio.gather(
            request("other user's chats", f"{CHATS}/all", other), request("health", "/health", None)
        )
        await asyncio.wait([renaming, others], return_when=asyncio.FIRST_COMPLETED)
    finally:
        held.release()
    listed, health = await others
    renamed = await renaming
    assert finished[-1] == "rename", finished
    assert sorted(finished) == ["health", "other user's chats", "rename"]
    assert health.status == 200
    assert listed.status == 200 and [c["id"] for c in listed.body] == [other_chat]
    assert renamed.status == 200 and renamed.body["title"] == "big, renamed", renamed.status
    assert len(renamed.body["chat"]["history"]["messages"]) == REPLIES + 1


# -- 5. /api/v1/auths/ answers with the caller's own token -------------------------------------
TOKEN_LIKE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+|sk-[A-Za-z0-9]+")


def assert_no_other_token(reply: Reply, sent: str) -> None:
    """No JWT or API key in the reply's body or cookies but the one the request sent."""
    carried = set(TOKEN_LIKE.findall(reply.text + "\n".join(reply.set_cookies)))
    assert carried <= {sent}, carried - {sent}


async def session_of(gw: GatewayProcess, token: str) -> dict[str, Any]:
    reply = await call("GET", f"{gw.url}{AUTHS}/", token)
    assert reply.status == 200, reply
    assert reply.set_cookies == []
    assert_no_other_token(reply, token)
    session: dict[str, Any] = reply.body
    return session


async def test_the_session_route_answers_with_the_callers_own_token(
    gateway: GatewayProcess,
) -> None:
    user_id = f"rest-session-{uuid.uuid4().hex[:8]}"
    token = make_token(user_id, name="Session")
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    session = await session_of(gateway, token)
    assert session["token"] == token and session["id"] == user_id
    assert session["expires_at"] == exp and type(session["expires_at"]) is int
    lasting = make_token(user_id, ttl_s=None)
    session = await session_of(gateway, lasting)
    assert session["token"] == lasting and session["expires_at"] is None

    # An API key: answered with itself; deleted, refused.
    made = await post_json(f"{gateway.url}{AUTHS}/api_key", token, {})
    key = made["api_key"]
    session = await session_of(gateway, key)
    assert session["token"] == key and session["id"] == user_id
    assert session["expires_at"] is None
    deleted = await call("DELETE", f"{gateway.url}{AUTHS}/api_key", token)
    assert deleted.status == 200 and deleted.body is True
    assert_no_other_token(deleted, token)
    refused = await call("GET", f"{gateway.url}{AUTHS}/", key)
    assert refused.status == 401 and refused.body["detail"], refused
    assert_no_other_token(refused, key)
    assert (await session_of(gateway, token))["token"] == token


# -- 6. a user of role pending -----------------------------------------------------------------
async def first_admin(gw: GatewayProcess) -> dict[str, Any]:
    """Ada signs up first: the store's first user, its admin (her session)."""
    ada: dict[str, Any] = await post_json(
        f"{gw.url}{AUTHS}/signup",
        None,
        {"name": "Ada", "email": "ada@example.com", "password": "ada-secret"},
    )
    assert ada["role"] == "admin"
    return ada


async def test_a_pending_user_has_only_a_session_and_the_config(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway()
    admin = await first_admin(gw)
    credentials = {"email": "pat@example.com", "password": "pat-secret"}
    added = await post_json(
        f"{gw.url}{AUTHS}/add", admin["token"], {"name": "Pat", "role": "pending", **credentials}
    )
    assert added["role"] == "pending"
    signed_in = await post_json(f"{gw.url}{AUTHS}/signin", None, credentials)
    token = signed_in["token"]
    assert (await get_json(f"{gw.url}{AUTHS}/", token))["role"] == "pending"
    config = await get_json(f"{gw.url}/api/config", token)
    assert "ui" in config  # the signed-in shape: the web app shows its waiting page

    refusals = [
        ("POST", "/api/v1/chats/new", {"chat": {"title": "mine"}}),
        ("POST", "/api/chat/completions", turn_body("no-socket", "let me in")),
        ("GET", f"{CHATS}/all", None),
    ]
    for method, path, body in refusals:
        refused = await call(method, f"{gw.url}{path}", token, body)
        assert refused.status == 401 and "pending" in refused.body["detail"], (path, refused)
    openai_body = {"model": "gateway-demo", "messages": [{"role": "user", "content": "hi"}]}
    refused = await call("POST", f"{gw.url}/v1/chat/completions", token, openai_body)
    assert refused.status == 401, refused

    # Socket.IO: the handshake's token and `user-join` authenticate an admin, not Pat.
    join = {"chat_id": "any-chat", "data": {"type": "join"}}
    for who, expected in ((admin, {"id": admin["id"], "name": "Ada"}), (signed_in, None)):
        sock = await PySocket().connect(gw.url, who["token"])
        try:
            assert await sock.client.call("user-join", {"auth": {"token": who["token"]}}) == (
                expected
            )
            # An authenticated socket is told the chat is not its own; Pat's is not answered.
            assert await sock.client.call("events:chat", join) is (
                False if expected is not None else None
            )
        finally:
            await sock.close()
    async with websockets.connect(ws_url(gw, "/ws/chat/s1", token)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_names_addresses_and_tags_are_bounded(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway()
    signup = f"{gw.url}{AUTHS}/signup"
    for email, name in [
        ("@", "At"),
        ("a@", "A"),
        ("@example.com", "Nobody"),
        ("x" * 250 + "@example.com", "Long"),  # past 254 characters
        ("named@example.com", "n" * 10_000),  # would go into every token
    ]:
        refused = await call(
            "POST", signup, None, {"email": email, "password": "pw-12345", "name": name}
        )
        assert refused.status == 400 and refused.body["detail"], (email, refused)
    longest = "x" * 242 + "@example.com"  # 254
    made = await call(
        "POST", signup, None, {"email": longest, "password": "pw-12345", "name": "n" * 256}
    )
    assert made.status == 200, made
    token = made.body["token"]
    assert (await get_json(f"{gw.url}{AUTHS}/", token))["name"] == "n" * 256

    chat_id = await new_chat(gw, token, [message("q", None, "hi")], "q")
    too_long = await call("POST", f"{gw.url}{CHATS}/{chat_id}/tags", token, {"name": "t" * 101})
    assert too_long.status == 400 and "100" in too_long.body["detail"]
    tagged = await call("POST", f"{gw.url}{CHATS}/{chat_id}/tags", token, {"name": "t" * 100})
    assert tagged.status == 200 and [tag["name"] for tag in tagged.body] == ["t" * 100]


async def test_the_ids_a_reply_carries_are_bounded(gateway: GatewayProcess) -> None:
    """Every event of a reply carries its chat's and its message's ids (and the event
    streams' cursors quote the message id at each): a client's 1 MB id cost 48 s of
    the loop for one short reply; past 256 characters an id is refused first."""
    token = new_user("rest-long-ids")
    sock = await PySocket().connect(gateway.url, token)
    url = f"{gateway.url}/api/chat/completions"
    try:
        for body in (
            turn_body(sock.sid, "q", assistant_id="a" * 257),
            turn_body(sock.sid, "q", user_message_id="u" * 257),
            turn_body(sock.sid, "q", chat_id="local:" + "c" * 300),  # a temporary chat
        ):
            refused = await call("POST", url, token, body)
            assert refused.status == 400 and "256" in refused.body["detail"], refused
        answered = await post_json(url, token, turn_body(sock.sid, "q", assistant_id="a" * 256))
        await sock.wait_ended()
        chat = await get_json(f"{gateway.url}{CHATS}/{answered['chat_id']}", token)
        assert "a" * 256 in chat["chat"]["history"]["messages"]
    finally:
        await sock.close()


async def test_the_ids_a_saved_chat_names_are_bounded(gateway: GatewayProcess) -> None:
    """A chat saved with a message id past 256 characters would be refused at its
    next turn (the test above); it is refused when saved, and the error does not
    echo the id. Every way a client saves a history: new, update, one message."""
    token = new_user("rest-saved-long-ids")
    long_id = "m" * 257
    new_url = f"{gateway.url}{CHATS}/new"
    for messages, current in (
        ([message(long_id, None, "hi")], long_id),
        ([message("q", long_id, "hi")], "q"),  # a parent that does not exist either
        ([message("q", None, "hi")], long_id),
    ):
        history = {"currentId": current, "messages": {m["id"]: m for m in messages}}
        refused = await call("POST", new_url, token, {"chat": {"history": history}})
        assert refused.status == 400 and "256" in refused.body["detail"], refused
        assert long_id not in refused.text
    flat = {"chat": {"messages": [{"id": long_id, "role": "user", "content": "hi"}]}}
    refused = await call("POST", new_url, token, flat)
    assert refused.status == 400 and "256" in refused.body["detail"], refused

    chat_id = await new_chat(gateway, token, [message("q", None, "hi")], "q")
    update = {"history": {"messages": {long_id: message(long_id, "q", "there")}}}
    refused = await call("POST", f"{gateway.url}{CHATS}/{chat_id}", token, {"chat": update})
    assert refused.status == 400 and "256" in refused.body["detail"], refused
    one = f"{gateway.url}{CHATS}/{chat_id}/messages/{long_id}"
    refused = await call("POST", one, token, {"role": "user", "content": "there"})
    assert refused.status == 400 and "256" in refused.body["detail"], refused

    fits = "m" * 256
    update = {"history": {"messages": {fits: message(fits, "q", "there")}, "currentId": fits}}
    saved = await call("POST", f"{gateway.url}{CHATS}/{chat_id}", token, {"chat": update})
    assert saved.status == 200, saved
    chat = await get_json(f"{gateway.url}{CHATS}/{chat_id}", token)
    assert set(chat["chat"]["history"]["messages"]) == {"q", fits}


async def test_an_admin_lets_a_pending_user_in(start_gateway: Any) -> None:
    # Refused while pending, nothing could change a role: the account was dead.
    gw: GatewayProcess = start_gateway({"GATEWAY_ACCESS_RECHECK_S": "0.2"})
    admin = await first_admin(gw)
    credentials = {"email": "pat@example.com", "password": "pat-secret"}
    pat = await post_json(
        f"{gw.url}{AUTHS}/add", admin["token"], {"name": "Pat", "role": "pending", **credentials}
    )
    token = (await post_json(f"{gw.url}{AUTHS}/signin", None, credentials))["token"]
    role_url = f"{gw.url}/api/v1/users/update/role"
    refused = await call("POST", role_url, token, {"id": pat["id"], "role": "user"})
    assert refused.status == 401  # a pending user cannot let themselves in
    mine = await call("POST", role_url, admin["token"], {"id": admin["id"], "role": "user"})
    assert mine.status == 403  # nor an admin change their own role
    let_in = await call("POST", role_url, admin["token"], {"id": pat["id"], "role": "user"})
    assert let_in.status == 200 and let_in.body["role"] == "user"
    assert "password" not in let_in.text
    made = await eventually_status(gw, token, 200)
    assert made.body["user_id"] == pat["id"]


async def test_no_admin_changes_or_removes_the_primary_admin(start_gateway: Any) -> None:
    # Any admin could demote or remove any other: a second admin could lock out the
    # deployment's first.  As Open WebUI: the primary admin (the oldest admin account)
    # is changed or removed only by the operator, from the command line.
    gw: GatewayProcess = start_gateway()
    ada = await first_admin(gw)
    await asyncio.sleep(1.1)  # accounts are dated in seconds (one second: by id)
    credentials = {"email": "bob@example.com", "password": "bob-secret"}
    bob = await post_json(
        f"{gw.url}{AUTHS}/add", ada["token"], {"name": "Bob", "role": "admin", **credentials}
    )
    bob_token = (await post_json(f"{gw.url}{AUTHS}/signin", None, credentials))["token"]
    role_url = f"{gw.url}/api/v1/users/update/role"
    demoted = await call("POST", role_url, bob_token, {"id": ada["id"], "role": "user"})
    assert demoted.status == 403 and "primary admin" in demoted.body["detail"], demoted
    removed = await call("DELETE", f"{gw.url}/api/v1/users/{ada['id']}", bob_token)
    assert removed.status == 403 and "primary admin" in removed.body["detail"], removed
    signed_in = await post_json(
        f"{gw.url}{AUTHS}/signin", None, {"email": "ada@example.com", "password": "ada-secret"}
    )
    assert signed_in["role"] == "admin"
    # Nor are the primary admin's keys revoked by another admin (a key-only admin
    # would be locked out): by them, or an operator.
    await post_json(f"{gw.url}{AUTHS}/api_key", ada["token"], {})
    (ada_key,) = await get_json(f"{gw.url}{AUTHS}/api_keys", ada["token"])
    revoked = await call("DELETE", f"{gw.url}{AUTHS}/api_keys/{ada_key['id']}", bob_token)
    assert revoked.status == 403 and "primary admin" in revoked.body["detail"], revoked
    # The primary admin changes the others' roles, and removes them, as before.
    assert (
        await call("POST", role_url, ada["token"], {"id": bob["id"], "role": "user"})
    ).status == 200
    assert (
        await call("POST", role_url, ada["token"], {"id": bob["id"], "role": "admin"})
    ).status == 200
    # The operator can, from the command line; then the next oldest admin is the primary.
    await operator(gw, "users", "role", "ada@example.com", "user")
    bob_removes = await call("DELETE", f"{gw.url}/api/v1/users/{ada['id']}", bob_token)
    assert bob_removes.status == 200, bob_removes
    refused = await call("POST", role_url, bob_token, {"id": bob["id"], "role": "user"})
    assert refused.status == 403  # their own role, as before


async def test_an_account_older_than_the_primary_admin_is_made_an_admin_by_the_operator_only(
    start_gateway: Any,
) -> None:
    # A token's user, made before the first admin (the README's order): promoted, it
    # would have become the primary admin (the oldest admin account), and the one
    # before it could then be demoted or removed by any admin.
    gw: GatewayProcess = start_gateway()
    older = new_user("rest-older")
    older_id = (await get_json(f"{gw.url}{AUTHS}/", older))["id"]
    await asyncio.sleep(1.1)  # accounts are dated in seconds
    ada_id = (
        await operator(gw, "users", "add", "--email", "ada@example.com", "--password", "ada-secret")
    ).split("\t")[0]
    ada = await post_json(
        f"{gw.url}{AUTHS}/signin", None, {"email": "ada@example.com", "password": "ada-secret"}
    )
    assert (ada["id"], ada["role"]) == (ada_id, "admin")
    await asyncio.sleep(1.1)
    credentials = {"email": "bob@example.com", "password": "bob-secret"}
    await post_json(
        f"{gw.url}{AUTHS}/add", ada["token"], {"name": "Bob", "role": "admin", **credentials}
    )
    bob = (await post_json(f"{gw.url}{AUTHS}/signin", None, credentials))["token"]
    role_url = f"{gw.url}/api/v1/users/update/role"
    for admin in (bob, ada["token"]):
        promoted = await call("POST", role_url, admin, {"id": older_id, "role": "admin"})
        assert promoted.status == 403 and "older than the primary admin" in promoted.body["detail"]
    demoted = await call("POST", role_url, bob, {"id": ada_id, "role": "user"})
    assert demoted.status == 403, demoted  # Ada is still the primary admin
    await operator(gw, "users", "role", older_id, "admin")
    assert (await call("POST", role_url, bob, {"id": ada_id, "role": "user"})).status == 200


async def operator(gw: GatewayProcess, *args: str) -> str:
    """A `gateway` command run by the operator on the gateway's store: its output."""
    env = {"PATH": os.environ["PATH"], "DATA_DIR": str(gw.data_dir)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def eventually_status(gw: GatewayProcess, token: str, status: int) -> Reply:
    """A chat made once the role is taken (principals are remembered a recheck long)."""
    for _ in range(50):
        made = await call("POST", f"{gw.url}{CHATS}/new", token, {"chat": {"title": "in"}})
        if made.status == status:
            return made
        await asyncio.sleep(0.1)
    raise AssertionError(f"still {made.status}: {made.body}")
