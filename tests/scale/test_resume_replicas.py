"""Resuming a reply on another replica: two replicas A and B on one Redis (the replay
buffer is a Redis stream per reply) and one PostgreSQL database, as processes on
loopback.

The reply runs on A; the client is cut there, reconnects to B and resumes.  On
every transport (Nadoo WS, RAGFlow WS, Socket.IO, SSE attach, SSE mirror), over
several cut points of fake-slow's 64 deltas (a fixed seed, run at once, some late,
one after the reply ended), the text rebuilt from what came before the cut and what
B sent equals the upstream's exactly: no duplicate, no gap.  Another user's reply
is never found; a replica killed mid-reply leaves the resumed client an end."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import websockets

from tests.clients import PySocket, get_json, post_json, turn_body
from tests.gatewayproc import GatewayProcess, make_token

Start = Callable[..., GatewayProcess]

SLOW = [f"w{i} " for i in range(64)]  # fake-slow's deltas, 20 ms apart
SLOW_TEXT = "".join(SLOW)
SEED = 1616
RAGFLOW_END = {"code": 0, "message": "", "data": True}


def cuts(salt: int) -> list[tuple[int, bool]]:
    """(deltas the client has when cut, whether it comes back only after the reply
    ended): three anywhere, two late (the last delta among them), one after the end."""
    rng = random.Random(SEED + salt)
    anywhere = sorted(rng.sample(range(1, 56), 3))
    late = [rng.randint(56, 63), 64]
    return [(k, False) for k in [*anywhere, *late]] + [(rng.randint(2, 62), True)]


def user() -> tuple[str, str]:
    user_id = f"resume-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


def ws_url(replica: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{replica.port}{path}"


async def recv(ws: Any, timeout_s: float = 10, why: str = "a frame") -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"no frame in {timeout_s} s, waiting for {why}") from None
    frame: dict[str, Any] = json.loads(raw)
    return frame


def increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(seqs))


async def reply_ended(replica: GatewayProcess, token: str, chat_id: str, message_id: str) -> None:
    """Until the stored reply is done (its end is published right after)."""
    deadline = time.monotonic() + 10
    while True:
        chat = await get_json(f"{replica.url}/api/v1/chats/{chat_id}", token)
        message = chat["chat"]["history"]["messages"].get(message_id) or {}
        if message.get("done") is True:
            return
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def web_turn(replica: GatewayProcess, token: str, session_id: str) -> tuple[str, str]:
    """A web-app turn to fake-slow on `replica`: (chat id, reply's message id)."""
    body = turn_body(session_id, f"go {uuid.uuid4().hex[:6]}", model="fake-slow")
    answer = await post_json(f"{replica.url}/api/chat/completions", token, body)
    return answer["chat_id"], body["id"]


async def nadoo_turn(replica: GatewayProcess, token: str) -> tuple[Any, dict[str, Any]]:
    """A Nadoo socket (seq=1) on `replica` that asked fake-slow: (socket, response_start)."""
    url = ws_url(replica, f"/ws/chat/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}")
    ws = await websockets.connect(url)
    assert (await recv(ws))["type"] == "connected"
    await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
    start = await recv(ws)
    assert start["type"] == "response_start" and start["seq"] == 0, start
    return ws, start


# -- SSE ------------------------------------------------------------------------------------
async def sse(
    resp: aiohttp.ClientResponse, timeout_s: float = 10
) -> AsyncGenerator[tuple[str | None, dict[str, Any]], None]:
    """(id or None, envelope) per SSE event (comments skipped); an AssertionError when
    the stream is silent for `timeout_s` (its keepalive comes every 15 s)."""
    event_id: str | None = None
    data: dict[str, Any] | None = None
    while True:
        try:
            raw = await asyncio.wait_for(resp.content.readline(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"SSE stream silent for {timeout_s} s") from None
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "":
            if data is not None:
                yield event_id, data
            event_id, data = None, None


def kind(envelope: dict[str, Any]) -> str:
    return str(envelope["data"]["type"])


def is_end(envelope: dict[str, Any]) -> bool:
    return kind(envelope) == "chat:active" and envelope["data"]["data"] == {"active": False}


def rebuilt(envelopes: list[dict[str, Any]], message_id: str) -> str:
    """A reply's text as the web app rebuilds it: `chat:message` replaces, deltas append."""
    text = ""
    for envelope in envelopes:
        if envelope["message_id"] != message_id:
            continue
        if kind(envelope) == "chat:message":
            text = envelope["data"]["data"]["content"]
        elif kind(envelope) == "chat:message:delta":
            text += envelope["data"]["data"]["content"]
    return text


def auth(token: str, last_event_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


def deltas_of(events: list[dict[str, Any]], message_id: str) -> int:
    """Deltas of the reply among Socket.IO records or SSE envelopes."""
    return sum(
        e["message_id"] == message_id
        and (e.get("type") or e["data"]["type"]) == "chat:message:delta"
        for e in events
    )


# -- 1. every transport, several cut points -----------------------------------------------
async def test_nadoo_ws_cut_on_a_resumes_on_b_exactly(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")

    async def one(cut: int, after_end: bool) -> list[dict[str, Any]]:
        _, token = user()
        ws, start = await nadoo_turn(a, token)
        had = [start]
        try:
            while sum(f["type"] == "text-delta" for f in had) < cut:
                had.append(await recv(ws))
        finally:
            await ws.close()
        message_id, chat_id = start["message_id"], start["chat_id"]
        if after_end:
            await reply_ended(b, token, chat_id, message_id)
        url = ws_url(b, f"/ws/chat/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}")
        async with websockets.connect(url) as ws:
            assert (await recv(ws))["type"] == "connected"
            after = had[-1]["seq"]
            resume = {"type": "resume", "message_id": message_id, "after": after}
            await ws.send(json.dumps({**resume, "chat_id": chat_id}))
            why = f"the end after a resume at {after} (cut {cut})"
            rest = [await recv(ws, why=why)]
            while rest[-1]["type"] not in ("response_end", "error"):
                rest.append(await recv(ws, why=why))
        return had + rest

    cut_points = cuts(1)
    runs = await asyncio.gather(*(one(cut, after_end) for cut, after_end in cut_points))
    for (cut, _), frames in zip(cut_points, runs, strict=True):
        deltas = [f for f in frames if f["type"] == "text-delta"]
        assert "".join(f["text"] for f in deltas) == SLOW_TEXT, cut
        assert increasing([f["seq"] for f in frames]), (cut, [f["seq"] for f in frames])
        assert [f["index"] for f in deltas] == list(range(64)), cut
        assert [f["seq"] for f in deltas] == list(range(1, 65)), cut
        assert frames[-1]["type"] == "response_end", frames[-1]
        assert frames[-1]["full_response"] == SLOW_TEXT.strip()
        assert not [f for f in frames if f["type"] == "snapshot"], cut


async def ragflow_user(replica: GatewayProcess) -> tuple[str, str, str]:
    """A user's token, their RAGFlow API key and an assistant of theirs on fake-slow."""
    _, token = user()
    made = await post_json(f"{replica.url}/ragflow/v1/system/new_token", token, None)
    key = made["data"]["token"]
    body = {"name": "bot", "llm": {"model_name": "fake-slow"}}
    assistant = await post_json(f"{replica.url}/ragflow/api/v1/chats", key, body)
    return token, key, assistant["data"]["id"]


async def test_ragflow_ws_cut_on_a_resumes_on_b_cumulative(cluster: Start) -> None:
    # A resume frame names no mode: B answers it in its own (the setting).
    cumulative = {"GATEWAY_RAGFLOW_WS_ANSWER_MODE": "cumulative"}
    a, b = cluster("a", extra=cumulative), cluster("b", extra=cumulative)

    async def one(cut: int, after_end: bool) -> tuple[list[dict[str, Any]], list[Any]]:
        token, key, assistant = await ragflow_user(a)
        question = {"type": "chat", "chat_id": assistant, "question": "go"}
        had: list[dict[str, Any]] = []
        async with websockets.connect(ws_url(a, f"/v1/ws/chat?token={key}&seq=1")) as ws:
            await ws.send(json.dumps({**question, "answer_mode": "cumulative"}))
            while len(had) < cut:
                frame = await recv(ws)
                assert frame["code"] == 0 and frame["data"] is not True, frame
                had.append(frame)
        message_id, session_id = had[0]["data"]["id"], had[0]["data"]["session_id"]
        if after_end:
            await reply_ended(b, token, session_id, message_id)
        after = had[-1]["data"]["seq"]
        resume = {"type": "resume", "message_id": message_id, "after": after}
        rest: list[Any] = []
        async with websockets.connect(ws_url(b, f"/v1/ws/chat?token={key}&seq=1")) as ws:
            await ws.send(json.dumps({**resume, "session_id": session_id}))
            while not rest or rest[-1] != RAGFLOW_END:
                rest.append(await recv(ws, why=f"the END after a resume at {after}"))
        return had, rest

    cut_points = cuts(2)
    runs = await asyncio.gather(*(one(cut, after_end) for cut, after_end in cut_points))
    for (cut, _), (had, rest) in zip(cut_points, runs, strict=True):
        chunks = had + rest[:-1]
        assert all(c["code"] == 0 and not c["data"].get("snapshot") for c in chunks), cut
        seqs = [c["data"]["seq"] for c in chunks]
        # A chunk per delta, each once (the end, in cumulative mode, is the END frame).
        assert seqs == list(range(1, 65)), (cut, seqs)
        # Cumulative: every answer is the whole text up to its delta, after the
        # resume too (B primed it from the buffer).
        answers = [c["data"]["answer"] for c in chunks]
        assert answers == ["".join(SLOW[:seq]) for seq in seqs], cut
        assert answers[-1] == SLOW_TEXT
        assert {c["data"]["id"] for c in chunks} == {had[0]["data"]["id"]}


def text_rebuilt(events: list[dict[str, Any]], message_id: str) -> str:
    """As `rebuilt`, over recorded Socket.IO events (tests/clients.py's shape)."""
    return rebuilt([{"message_id": e["message_id"], "data": e} for e in events], message_id)


def upto_seq(events: list[dict[str, Any]], message_id: str, seq: int) -> list[dict[str, Any]]:
    """The events up to the reply's envelope of `seq`: what a client cut there has."""
    for index, event in enumerate(events):
        if event["message_id"] == message_id and event["seq"] == seq:
            return events[: index + 1]
    raise AssertionError(f"no envelope of seq {seq}")


async def test_socketio_resume_on_b_of_a_reply_cut_on_a(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")

    async def one(cut: int, after_end: bool) -> tuple[list[Any], list[Any], str]:
        _, token = user()
        # Each envelope with its seq (`auth.seq`): what the resume names.  Counting
        # deltas would not do: the reply may start before the socket has joined its
        # room, and then comes first as a catch-up snapshot standing for several.
        first = await PySocket().connect(a.url, token, auth={"seq": True})
        try:
            chat_id, message_id = await web_turn(a, token, first.sid)
            await first.wait_until(
                lambda events: any(
                    e["message_id"] == message_id and e["seq"] >= cut for e in events
                )
            )
        finally:
            await first.close()
        seq = next(
            e["seq"] for e in first.events if e["message_id"] == message_id and e["seq"] >= cut
        )
        had = upto_seq(first.events, message_id, seq)
        if after_end:
            await reply_ended(b, token, chat_id, message_id)
        # Back on B, naming in the handshake what it has (`auth.resume`): that reply
        # is replayed after its seq, not caught up as a snapshot.
        back = await PySocket().connect(
            b.url, token, auth={"seq": True, "resume": {message_id: seq}}
        )
        try:
            await back.wait_ended(timeout_s=10)
        finally:
            await back.close()
        return had, [e for e in back.events if e["message_id"] == message_id], message_id

    cut_points = cuts(3)
    runs = await asyncio.gather(*(one(cut, after_end) for cut, after_end in cut_points))
    for (cut, after_end), (had, got, message_id) in zip(cut_points, runs, strict=True):
        kinds = [e["type"] for e in got]
        assert text_rebuilt(had + got, message_id) == SLOW_TEXT, (cut, after_end, kinds)
        assert kinds.count("chat:completion") == 1 and kinds[-1] == "chat:active", kinds
        # Only what followed the seq named, each once, in order (an end event's
        # envelopes share its seq).
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(seqs) and min(seqs) > had[-1]["seq"], (cut, seqs)
        if after_end:  # only the rest, and the end
            assert kinds.count("chat:message:delta") == 64 - had[-1]["seq"], (cut, kinds)
            assert "chat:message" not in kinds


def attach_url(replica: GatewayProcess, chat_id: str, message_id: str) -> str:
    return f"{replica.url}/api/v1/chats/{chat_id}/messages/{message_id}/stream"


async def read_attach(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    last_event_id: str | None,
    cut: int | None = None,
) -> tuple[list[tuple[str | None, dict[str, Any]]], str | None]:
    """One reply's SSE stream: its events up to the `cut`th delta (None: to the
    end), and the last id seen."""
    got: list[tuple[str | None, dict[str, Any]]] = []
    last = last_event_id
    async with http.get(url, headers=auth(token, last_event_id)) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = sse(resp)
        async for event_id, envelope in events:
            got.append((event_id, envelope))
            last = event_id if event_id is not None else last
            deltas = sum(kind(e) == "chat:message:delta" for _, e in got)
            if is_end(envelope) or (cut is not None and deltas >= cut):
                break
        await events.aclose()
    return got, last


async def test_sse_attach_cut_on_a_resumes_on_b_with_last_event_id(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")

    async def one(cut: int, after_end: bool) -> tuple[list[Any], list[Any], int]:
        _, token = user()
        chat_id, message_id = await web_turn(a, token, f"sid-{uuid.uuid4().hex[:8]}")
        async with aiohttp.ClientSession() as http:
            had, last = await read_attach(
                http, attach_url(a, chat_id, message_id), token, None, cut
            )
            assert last == str(cut)  # a delta's id is its seq: the kth delta is seq k
            if after_end:
                await reply_ended(b, token, chat_id, message_id)
            url = attach_url(b, chat_id, message_id)
            rest, end_id = await read_attach(http, url, token, last)
            # The client has the end: nothing more to send.
            async with http.get(url, headers=auth(token, end_id)) as resp:
                status = resp.status
        return had, rest, status

    cut_points = cuts(4)
    runs = await asyncio.gather(*(one(cut, after_end) for cut, after_end in cut_points))
    for (cut, after_end), (had, rest, status) in zip(cut_points, runs, strict=True):
        envelopes = [e for _, e in had + rest]
        kinds = [kind(e) for e in envelopes]
        assert rebuilt(envelopes, envelopes[0]["message_id"]) == SLOW_TEXT, (cut, kinds)
        # B's buffer had all the client missed: no snapshot.
        assert "chat:message" not in [kind(e) for _, e in rest], (cut, kinds)
        ids = [int(event_id) for event_id, _ in had + rest if event_id is not None]
        assert increasing(ids), (cut, ids)
        assert kinds.count("chat:completion") == 1 and is_end(envelopes[-1]), kinds
        assert status == 204, (cut, status)
        if after_end:
            assert [kind(e) for _, e in rest].count("chat:message:delta") == 64 - cut


# -- 2. a new Socket.IO tab on B while the reply runs on A ------------------------------------
async def test_a_new_socketio_tab_on_b_gets_the_text_so_far_then_the_rest(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    on_a = await PySocket().connect(a.url, token)
    tabs: list[PySocket] = []
    try:
        _chat_id, message_id = await web_turn(a, token, on_a.sid)
        for opened_after in (5, 40):  # deltas seen on A when the tab opens on B

            def seen(events: list[dict[str, Any]], n: int = opened_after) -> bool:
                return deltas_of(events, message_id) >= n

            await on_a.wait_until(seen)
            tabs.append(await PySocket().connect(b.url, token))
        for tab in tabs:
            await tab.wait_ended(timeout_s=10)
    finally:
        for sock in (on_a, *tabs):
            await sock.close()
    for tab in tabs:
        mine = [e for e in tab.events if e["message_id"] == message_id]
        kinds = [e["type"] for e in mine]
        assert kinds.count("chat:message") == 1 and kinds.count("chat:completion") == 1, kinds
        at = kinds.index("chat:message")
        snapshot = mine[at]["data"]
        assert snapshot["snapshot"] == "exact" and snapshot["content"], snapshot
        later = "".join(
            e["data"]["content"] for e in mine[at:] if e["type"] == "chat:message:delta"
        )
        assert snapshot["content"] + later == SLOW_TEXT
        assert text_rebuilt(tab.events, message_id) == SLOW_TEXT


# -- 3. the SSE mirror: on B, cut, resumed on A -----------------------------------------------
async def test_sse_mirror_on_b_cut_mid_reply_resumes_on_a(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")

    async def one(cut: int, after_end: bool) -> tuple[list[Any], list[Any], str]:
        _, token = user()
        had: list[tuple[str | None, dict[str, Any]]] = []
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{b.url}/api/v1/events", headers=auth(token)) as resp:
                assert resp.status == 200, await resp.text()
                # Subscribed once the headers came: the reply, on A, is seen from its start.
                chat_id, message_id = await web_turn(a, token, f"sid-{uuid.uuid4().hex[:8]}")
                events = sse(resp)
                async for event_id, envelope in events:
                    had.append((event_id, envelope))
                    if deltas_of([e for _, e in had], message_id) >= cut:
                        break
                await events.aclose()
            last = next(event_id for event_id, _ in reversed(had) if event_id is not None)
            if after_end:
                await reply_ended(a, token, chat_id, message_id)
            rest: list[tuple[str | None, dict[str, Any]]] = []
            async with http.get(f"{a.url}/api/v1/events", headers=auth(token, last)) as resp:
                assert resp.status == 200, await resp.text()
                events = sse(resp)
                async for event_id, envelope in events:
                    rest.append((event_id, envelope))
                    if envelope["message_id"] == message_id and is_end(envelope):
                        break
                await events.aclose()
        return had, rest, message_id

    cut_points = cuts(5)
    runs = await asyncio.gather(*(one(cut, after_end) for cut, after_end in cut_points))
    for (cut, after_end), (had, rest, message_id) in zip(cut_points, runs, strict=True):
        envelopes = [e for _, e in had + rest if e["message_id"] == message_id]
        kinds = [kind(e) for e in envelopes]
        assert rebuilt(envelopes, message_id) == SLOW_TEXT, (cut, after_end, kinds)
        assert kinds[0] == "chat:active" and "chat:message" not in kinds, kinds
        assert kinds.count("chat:completion") == 1, kinds
        assert rest[-1][0], rest[-1]  # the end's cursor, to go on from


# -- 4. another user's reply --------------------------------------------------------------
async def test_resuming_another_users_reply_on_b_is_refused_everywhere(cluster: Start) -> None:
    a, b = cluster("a"), cluster("b")
    _, owner = user()
    ws, start = await nadoo_turn(a, owner)
    await ws.close()  # the reply runs on, on A
    message_id, chat_id = start["message_id"], start["chat_id"]
    other, key, _ = await ragflow_user(b)
    tab = await PySocket().connect(b.url, other)
    try:
        # Nadoo: an error frame, the connection stays open.
        url = ws_url(b, f"/ws/chat/s-{uuid.uuid4().hex[:6]}?seq=1&token={other}")
        async with websockets.connect(url) as nadoo:
            assert (await recv(nadoo))["type"] == "connected"
            for named in ({"chat_id": chat_id}, {}):
                resume = {"type": "resume", "message_id": message_id, "after": 0, **named}
                await nadoo.send(json.dumps(resume))
                refused = await recv(nadoo)
                assert refused["type"] == "error" and refused["code"] == "not_found", refused
            await nadoo.send(json.dumps({"type": "ping"}))
            assert (await recv(nadoo))["type"] == "pong"
        # RAGFlow: a data error (102), no chunk.
        async with websockets.connect(ws_url(b, f"/v1/ws/chat?token={key}&seq=1")) as rag:
            resume = {"type": "resume", "message_id": message_id, "after": 0}
            await rag.send(json.dumps({**resume, "session_id": chat_id}))
            refused = await recv(rag)
            assert refused["code"] == 102 and refused["data"] is not True, refused
        # Socket.IO: unknown.
        resume = {"chat_id": chat_id, "data": {"type": "resume", "after": {message_id: -1}}}
        ack = await tab.client.call("events:chat", resume, timeout=10)
        assert ack == {"resumed": [], "unknown": [message_id]}
        # SSE: 404, with or without Last-Event-ID.
        async with aiohttp.ClientSession() as http:
            for last in (None, "3"):
                async with http.get(
                    attach_url(b, chat_id, message_id), headers=auth(other, last)
                ) as resp:
                    assert resp.status == 404, resp.status
            # The owner, on B: the whole reply.
            got, _ = await read_attach(http, attach_url(b, chat_id, message_id), owner, None)
        assert rebuilt([e for _, e in got], message_id) == SLOW_TEXT
    finally:
        await tab.close()
    # The other user's tab, there the whole time, got nothing of it.
    assert not [e for e in tab.events if e["message_id"] == message_id]


# -- 5. the replica running the reply dies ----------------------------------------------------
async def test_a_replica_killed_mid_reply_the_client_resumed_on_b_gets_an_end(
    cluster: Start,
) -> None:
    a, b = cluster("a"), cluster("b")
    _, token = user()
    ws, start = await nadoo_turn(a, token)
    had = [start]
    try:
        while sum(f["type"] == "text-delta" for f in had) < 20:
            had.append(await recv(ws))
    finally:
        await ws.close()
    message_id, chat_id, after = start["message_id"], start["chat_id"], had[-1]["seq"]
    url = ws_url(b, f"/ws/chat/s-{uuid.uuid4().hex[:6]}?seq=1&token={token}")
    async with websockets.connect(url) as ws, aiohttp.ClientSession() as http:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "resume", "message_id": message_id, "after": after}))
        resumed = [await recv(ws) for _ in range(10)]  # live from A, the last ones
        a.kill()
        # Another client resumes on B after the death, from the same point, over SSE.
        sse_rest, _ = await read_attach(http, attach_url(b, chat_id, message_id), token, str(after))
        # The survivor's takeover ended it (a dead replica is noticed within ~10 s).
        while resumed[-1]["type"] not in ("response_end", "error"):
            resumed.append(await recv(ws, 25, "the end the survivor publishes"))
        # After the takeover: a client that has the last delta the Nadoo one got
        # (live, from A) still gets the end it has not seen, not a 204.
        seen = max(f["seq"] for f in resumed if f["type"] == "text-delta")
        async with http.get(
            attach_url(b, chat_id, message_id), headers=auth(token, str(seen))
        ) as resp:
            late_status = resp.status
            late = [e async for _, e in sse(resp)] if late_status == 200 else []
    frames = had + resumed
    assert all(f["type"] in ("text-delta", "error") for f in resumed), resumed
    assert all("seq" in f for f in frames), frames[-3:]
    deltas = [f for f in frames if f["type"] == "text-delta"]
    text = "".join(f["text"] for f in deltas)
    assert len(text) > len("".join(SLOW[:20])) and SLOW_TEXT.startswith(text)
    assert [f["index"] for f in deltas] == list(range(len(deltas)))
    # The end is numbered after every event a client may have seen, even one A had
    # published but not yet written to the buffer when it died.
    assert increasing([f["seq"] for f in frames]), str([f["seq"] for f in frames])
    end = frames[-1]
    assert end["type"] == "error" and end["code"] == "replica_lost", end
    assert end["message_id"] == message_id
    sse_kinds = [kind(e) for _, e in sse_rest]
    assert sse_kinds[-3:] == ["chat:message:error", "chat:completion", "chat:active"], sse_kinds
    sse_text = "".join(SLOW[:20]) + rebuilt([e for _, e in sse_rest], message_id)
    assert SLOW_TEXT.startswith(sse_text), sse_text
    assert "chat:message" not in sse_kinds
    assert late_status == 200, late_status
    assert [kind(e) for e in late] == ["chat:message:error", "chat:completion", "chat:active"]
