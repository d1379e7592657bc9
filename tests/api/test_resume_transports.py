"""Resumable replies (issue 16) on every transport, with real clients, on one replica
(the in-process replay buffer): Nadoo's WebSocket (`websockets`), RAGFlow's
WebSocket (`websockets`, delta and cumulative answers), Socket.IO's explicit
`events:chat` resume (python-socketio) and the SSE attach stream (aiohttp).

1. Over many random cut points of a long reply (fake-slow: 64 deltas), what the
   client had before the cut and what the resume sent rebuild the upstream's text
   exactly: every seq once, in order, none missing.  A resume sent twice (a
   retry), or on top of the catch-up a Socket.IO tab gets as it joins, repeats
   nothing; a reply resumed again on the same connection once its first resume
   is over is sent again.
2. A resume that comes after the buffer let the reply go (a short
   GATEWAY_REPLAY_TTL_S), or on a gateway that keeps nothing
   (GATEWAY_REPLAY_EVENTS=0), gets the stored snapshot, marked as such.
3. Another user's reply is refused on every transport, and nothing of it leaks.
4. A malformed resume gets a clear error in the client's own protocol.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import websockets

from tests.clients import PySocket, ended, post_json, turn_body
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

SLOW = [f"w{i} " for i in range(64)]
SLOW_TEXT = "".join(SLOW)
# What the store keeps (and a stored snapshot or a reply's end carries): the text
# trimmed, as Open WebUI trims a reply.
STORED = SLOW_TEXT.strip()
# Seqs of a plain fake-slow reply: ReplyStarted 0, the deltas 1..64, ReplyFinished 65.
LAST_SEQ = len(SLOW) + 1
RAGFLOW_END = {"code": 0, "message": "", "data": True}
RECV_TIMEOUT_S = 10


# -- gateways with their own replay settings ------------------------------------------
@pytest.fixture(scope="module")
def gateways(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, GatewayProcess]]:
    """Extra gateways, started side by side: a replay buffer that lets a finished
    reply go after 0.3 s, one that keeps nothing, one whose RAGFlow sockets answer
    cumulatively."""
    settings = {
        "short_ttl": {"GATEWAY_REPLAY_TTL_S": "0.3"},
        "no_buffer": {"GATEWAY_REPLAY_EVENTS": "0"},
        "cumulative": {"GATEWAY_RAGFLOW_WS_ANSWER_MODE": "cumulative"},
    }
    procs = {
        name: GatewayProcess(
            tmp_path_factory.mktemp(name), {"OPENAI_API_BASE_URL": fake_upstream.url, **env}
        )
        for name, env in settings.items()
    }
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(GatewayProcess.start, procs.values()))
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


# -- clients ----------------------------------------------------------------------------
@dataclass
class Account:
    user_id: str
    token: str  # Open WebUI-style JWT: good on every transport
    ragflow_key: str = ""
    assistant_id: str = ""


def account() -> Account:
    user_id = f"resume-{uuid.uuid4().hex[:10]}"
    return Account(user_id, make_token(user_id))


async def ragflow_account(gw: GatewayProcess) -> Account:
    """A user with a RAGFlow API key and an assistant answering with fake-slow."""
    user = account()
    made = await post_json(f"{gw.url}/ragflow/v1/system/new_token", user.token, None)
    user.ragflow_key = made["data"]["token"]
    body = {"name": "resume bot", "llm": {"model_name": "fake-slow"}}
    created = await post_json(f"{gw.url}/ragflow/api/v1/chats", user.ragflow_key, body)
    user.assistant_id = created["data"]["id"]
    return user


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))


def nadoo_url(gw: GatewayProcess, token: str, session: str | None = None) -> str:
    session = session or f"s-{uuid.uuid4().hex[:8]}"
    return f"ws://127.0.0.1:{gw.port}/ws/chat/{session}?seq=1&token={token}"


async def nadoo_connect(gw: GatewayProcess, token: str) -> Any:
    ws = await websockets.connect(nadoo_url(gw, token))
    assert (await recv_json(ws))["type"] == "connected"
    return ws


def ragflow_url(gw: GatewayProcess, key: str) -> str:
    return f"ws://127.0.0.1:{gw.port}/v1/ws/chat?token={key}&seq=1"


def ragflow_question(user: Account) -> str:
    return json.dumps({"type": "chat", "chat_id": user.assistant_id, "question": "go"})


@dataclass
class NadooRun:
    """A started Nadoo reply, run to its end by its own socket."""

    message_id: str
    chat_id: str
    end: dict[str, Any]


async def nadoo_reply(gw: GatewayProcess, token: str) -> NadooRun:
    async with await nadoo_connect(gw, token) as ws:
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        start = await recv_json(ws)
        assert start["type"] == "response_start"
        while (frame := await recv_json(ws))["type"] != "response_end":
            pass
    return NadooRun(start["message_id"], start["chat_id"], frame)


async def started_nadoo_reply(gw: GatewayProcess, token: str) -> tuple[str, str]:
    """A fake-slow reply asked over Nadoo, left running: (message id, chat id)."""
    async with await nadoo_connect(gw, token) as ws:
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        start = await recv_json(ws)
        assert start["type"] == "response_start"
    return start["message_id"], start["chat_id"]


def sio_resume(chat_id: str, after: dict[str, int]) -> dict[str, Any]:
    return {"chat_id": chat_id, "data": {"type": "resume", "after": after}}


async def webapp_turn(gw: GatewayProcess, user: Account, sock: PySocket) -> tuple[str, str]:
    """A fake-slow turn as Open WebUI's web app asks it: (chat id, reply id)."""
    body = turn_body(sock.sid, "go", "fake-slow")
    answer = await post_json(f"{gw.url}/api/chat/completions", user.token, body)
    return answer["chat_id"], body["id"]


def of(events: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["message_id"] == message_id]


def rebuilt(events: list[dict[str, Any]], text: str = "") -> str:
    """A reply's text as the web app applies its events (`chat:message` replaces the
    text, a delta appends), up to its `chat:completion`."""
    for event in events:
        if event["type"] == "chat:message":
            text = event["data"]["content"]
        elif event["type"] == "chat:message:delta":
            text += event["data"]["content"]
        elif event["type"] == "chat:completion":
            break
    return text


def deltas(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["content"] for e in events if e["type"] == "chat:message:delta"]


@dataclass
class SSEEvent:
    id: str | None
    envelope: dict[str, Any]

    @property
    def type(self) -> str:
        kind: str = self.envelope["data"]["type"]
        return kind

    @property
    def data(self) -> Any:
        return self.envelope["data"]["data"]


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """The events of a `text/event-stream` body, as EventSource dispatches them."""
    event_id: str | None = None
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event_id, json.loads("\n".join(data)))
            event_id, data = None, []
            continue
        if line.startswith(":"):
            continue  # a comment (keepalive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def attach_url(gw: GatewayProcess, chat_id: str, message_id: str) -> str:
    return f"{gw.url}/api/v1/chats/{chat_id}/messages/{message_id}/stream"


async def sse_read_all(
    http: aiohttp.ClientSession, url: str, token: str, last_event_id: str | None = None
) -> list[SSEEvent]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return [event async for event in sse_events(resp)]


def cut_plans(rng: random.Random, count: int, low: int, high: int) -> list[list[int]]:
    """`count` plans of 1 to 3 increasing cut points in [low, high]; the first two
    plans cut at the edges."""
    plans = [[low], [high]]
    while len(plans) < count:
        plans.append(sorted(rng.sample(range(low, high + 1), rng.randint(1, 3))))
    return plans


# -- 1. random cut points, each transport ------------------------------------------------
async def nadoo_with_cuts(gw: GatewayProcess, cuts: list[int]) -> None:
    """Ask fake-slow over Nadoo; after each cut (a count of reply frames) drop the
    socket, connect anew (another session id) and resume after the last seq."""
    user = account()
    frames: list[dict[str, Any]] = []
    message_id = chat_id = ""
    ws = await nadoo_connect(gw, user.token)
    try:
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        pending = list(cuts)
        while True:
            frame = await recv_json(ws)
            if frame["type"] in ("typing", "user_disconnected"):
                continue
            frames.append(frame)
            if frame["type"] == "response_start":
                message_id, chat_id = frame["message_id"], frame["chat_id"]
            if frame["type"] == "response_end":
                break
            if pending and len(frames) >= pending[0]:
                pending.pop(0)
                await ws.close()
                ws = await nadoo_connect(gw, user.token)
                last = frames[-1]["seq"]
                resume = {"type": "resume", "message_id": message_id, "after": last}
                await ws.send(json.dumps({**resume, "chat_id": chat_id}))
    finally:
        await ws.close()
    assert [f["type"] for f in frames] == ["response_start"] + ["text-delta"] * 64 + [
        "response_end"
    ], cuts
    # Every seq once, in order, none missing: no duplicate and no gap.
    assert [f["seq"] for f in frames] == list(range(LAST_SEQ + 1)), cuts
    text_deltas = frames[1:-1]
    assert [f["index"] for f in text_deltas] == list(range(64)), cuts
    assert "".join(f["text"] for f in text_deltas) == SLOW_TEXT
    end = frames[-1]
    assert end["full_response"] == STORED and end["message_id"] == message_id
    assert end["chat_id"] == chat_id


async def test_nadoo_resume_at_random_cuts_rebuilds_the_reply(gateway: GatewayProcess) -> None:
    # Frames: response_start, 64 text-deltas, response_end; a cut after 1 frame
    # resumes after seq 0, after 65 frames after the last delta (only the end missed).
    plans = cut_plans(random.Random(1601), 12, 1, LAST_SEQ)
    await asyncio.gather(*(nadoo_with_cuts(gateway, plan) for plan in plans))


async def test_a_nadoo_resume_sent_twice_still_sends_each_frame_once(
    gateway: GatewayProcess,
) -> None:
    """A client that sends its resume again (a retry: the first seemed lost) gets
    what followed the cut once, `index` going on from where it was."""
    user = account()
    async with await nadoo_connect(gateway, user.token) as ws:
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"}))
        had = [await recv_json(ws)]
        while had[-1]["seq"] < 10:
            had.append(await recv_json(ws))
    start = had[0]
    resume = {"type": "resume", "message_id": start["message_id"], "after": had[-1]["seq"]}
    async with await nadoo_connect(gateway, user.token) as ws:
        await ws.send(json.dumps({**resume, "chat_id": start["chat_id"]}))
        await ws.send(json.dumps({**resume, "chat_id": start["chat_id"]}))
        frames = [await recv_json(ws)]
        while frames[-1]["type"] != "response_end":
            frames.append(await recv_json(ws))
        # And nothing after the end: everything before the answer to a ping.
        await ws.send(json.dumps({"type": "ping"}))
        while (frame := await recv_json(ws))["type"] != "pong":
            frames.append(frame)
    whole = had + frames
    assert [f["seq"] for f in whole] == list(range(LAST_SEQ + 1))
    text_deltas = [f for f in whole if f["type"] == "text-delta"]
    assert [f["index"] for f in text_deltas] == list(range(64))
    assert "".join(f["text"] for f in text_deltas) == SLOW_TEXT


async def ragflow_with_cuts(gw: GatewayProcess, user: Account, cuts: list[int]) -> list[Any]:
    """Ask fake-slow over RAGFlow's socket; after each cut (a count of chunks) drop
    the socket, connect anew and resume; every frame received, END included."""
    frames: list[Any] = []
    ws = await websockets.connect(ragflow_url(gw, user.ragflow_key))
    try:
        await ws.send(ragflow_question(user))
        pending = list(cuts)
        while True:
            frame = await recv_json(ws)
            frames.append(frame)
            if frame == RAGFLOW_END:
                break
            assert frame["code"] == 0, frame
            if pending and len(frames) >= pending[0]:
                pending.pop(0)
                data = frame["data"]
                await ws.close()
                ws = await websockets.connect(ragflow_url(gw, user.ragflow_key))
                resume = {"type": "resume", "message_id": data["id"], "after": data["seq"]}
                await ws.send(json.dumps({**resume, "session_id": data["session_id"]}))
    finally:
        await ws.close()
    return frames


async def test_ragflow_delta_answers_resume_at_random_cuts(gateway: GatewayProcess) -> None:
    async def one(cuts: list[int]) -> None:
        user = await ragflow_account(gateway)
        frames = await ragflow_with_cuts(gateway, user, cuts)
        assert frames[-1] == RAGFLOW_END
        chunks = [f["data"] for f in frames[:-1]]
        # A chunk per delta (seq 1..64), then the final empty one (seq 65).
        assert [c["seq"] for c in chunks] == list(range(1, LAST_SEQ + 1)), cuts
        assert "".join(c["answer"] for c in chunks) == SLOW_TEXT
        assert chunks[-1]["final"] is True and chunks[-1]["answer"] == ""
        assert not any(c["final"] for c in chunks[:-1])
        assert len({(c["id"], c["session_id"]) for c in chunks}) == 1

    await asyncio.gather(*(one(plan) for plan in cut_plans(random.Random(1602), 8, 1, 64)))


async def test_ragflow_cumulative_answers_resume_at_random_cuts(
    gateways: dict[str, GatewayProcess],
) -> None:
    gw = gateways["cumulative"]

    async def one(cuts: list[int]) -> None:
        user = await ragflow_account(gw)
        frames = await ragflow_with_cuts(gw, user, cuts)
        assert frames[-1] == RAGFLOW_END
        chunks = [f["data"] for f in frames[:-1]]
        assert [c["seq"] for c in chunks] == list(range(1, len(SLOW) + 1)), cuts
        # The whole answer so far in each chunk, before the cut and after it: the
        # resumed socket's answer was primed from the buffer.
        for c in chunks:
            assert c["answer"] == "".join(SLOW[: c["seq"]]), (cuts, c)
        assert len({(c["id"], c["session_id"]) for c in chunks}) == 1

    await asyncio.gather(*(one(plan) for plan in cut_plans(random.Random(1603), 8, 1, 64)))


async def test_socketio_resume_of_a_finished_reply_from_random_seqs(
    gateway: GatewayProcess,
) -> None:
    user = account()
    first = await PySocket().connect(gateway.url, user.token)
    try:
        chat_id, message_id = await webapp_turn(gateway, user, first)
        await first.wait_ended()
    finally:
        await first.close()
    assert "".join(deltas(of(first.events, message_id))) == SLOW_TEXT

    async def resume_after(after: int) -> None:
        sock = await PySocket().connect(gateway.url, user.token)
        try:
            ack = await sock.client.call(
                "events:chat", sio_resume(chat_id, {message_id: after}), timeout=RECV_TIMEOUT_S
            )
            assert ack == {"resumed": [message_id], "unknown": []}
            await sock.wait_ended()
        finally:
            await sock.close()
        got = of(sock.events, message_id)
        kinds = [e["type"] for e in got if e["type"] != "chat:title"]
        started = ["chat:active"] if after < 0 else []
        missed = len(SLOW) - max(after, 0)
        # Exactly what followed `after`: no snapshot, no delta twice, none missing.
        assert kinds == started + ["chat:message:delta"] * missed + [
            "chat:completion",
            "chat:active",
        ], after
        assert "".join(deltas(got)) == "".join(SLOW[max(after, 0) :])
        completion = next(e["data"] for e in got if e["type"] == "chat:completion")
        assert completion["done"] is True and completion["content"] == STORED
        assert "snapshot" not in completion

    rng = random.Random(1604)
    afters = [-1, 0, len(SLOW), *rng.sample(range(1, len(SLOW)), 9)]
    await asyncio.gather(*(resume_after(after) for after in afters))


async def test_a_reply_resumed_again_on_the_same_socketio_socket_is_sent_again(
    gateway: GatewayProcess,
) -> None:
    """Once a resume of a reply has run to the reply's end, a later resume of it on
    the same socket (a client rendering the message again) is a new request: what
    follows its seq comes again."""
    user = account()
    first = await PySocket().connect(gateway.url, user.token)
    try:
        chat_id, message_id = await webapp_turn(gateway, user, first)
        await first.wait_ended()
    finally:
        await first.close()
    sock = await PySocket().connect(gateway.url, user.token)
    try:
        for rounds, after in enumerate((60, 62), start=1):
            ack = await sock.client.call(
                "events:chat", sio_resume(chat_id, {message_id: after}), timeout=RECV_TIMEOUT_S
            )
            assert ack == {"resumed": [message_id], "unknown": []}
            await sock.wait_ended(rounds, timeout_s=RECV_TIMEOUT_S)
    finally:
        await sock.close()
    assert deltas(of(sock.events, message_id)) == SLOW[60:] + SLOW[62:]


async def test_a_reply_resumed_again_on_the_same_nadoo_socket_is_sent_again(
    gateway: GatewayProcess,
) -> None:
    """The same on Nadoo's socket: each resume frame gets what followed its seq."""
    user = account()
    run = await nadoo_reply(gateway, user.token)
    async with await nadoo_connect(gateway, user.token) as ws:
        for after in (60, 62):
            resume = {"type": "resume", "message_id": run.message_id, "after": after}
            await ws.send(json.dumps({**resume, "chat_id": run.chat_id}))
            frames = [await recv_json(ws)]
            while frames[-1]["type"] != "response_end":
                frames.append(await recv_json(ws))
            assert [f["seq"] for f in frames] == list(range(after + 1, LAST_SEQ + 1))
            assert [f["index"] for f in frames[:-1]] == list(range(after, 64))


async def test_socketio_resume_of_a_running_reply_at_random_cuts(
    gateway: GatewayProcess,
) -> None:
    """A tab cut mid-reply comes back and asks for what followed its last delta:
    applied as the web app applies them (`chat:message` replaces the text, a delta
    appends), the events give the reply exactly, none twice."""

    async def one(cut: int) -> None:
        user = account()
        # Each envelope with its seq (`auth.seq`): the last one is what the tab has.
        first = await PySocket().connect(gateway.url, user.token, auth={"seq": True})
        try:
            chat_id, message_id = await webapp_turn(gateway, user, first)
            await first.wait_until(lambda evs: any(e["seq"] >= cut for e in of(evs, message_id)))
        finally:
            await first.close()
        mine = of(first.events, message_id)
        upto = next(i for i, e in enumerate(mine) if e["seq"] >= cut)
        last = mine[upto]["seq"]
        text = rebuilt(mine[: upto + 1])
        back = await PySocket().connect(gateway.url, user.token)
        try:
            ack = await back.client.call(
                "events:chat", sio_resume(chat_id, {message_id: last}), timeout=RECV_TIMEOUT_S
            )
            assert ack == {"resumed": [message_id], "unknown": []}
            await back.wait_ended()
        finally:
            await back.close()
        got = of(back.events, message_id)
        assert all(e["seq"] is None for e in got), "seqs only to a socket that asked"
        text = rebuilt(got, text)
        more = deltas(got)
        assert len(more) == len(set(more)), f"a delta came twice after a cut at {last}: {more}"
        assert text == SLOW_TEXT, last
        completions = [e["data"] for e in got if e["type"] == "chat:completion"]
        assert len(completions) == 1 and completions[0]["content"] == STORED
        assert sum(map(ended, got)) == 1

    # Cuts up to 50 of 64 deltas: the reply still runs (for 280 ms or more) when the
    # resume comes, so the tab also gets the running reply's catch-up as it joins; the
    # two must not repeat one another.
    rng = random.Random(1605)
    await asyncio.gather(*(one(cut) for cut in [1, 50, *rng.sample(range(2, 50), 6)]))


async def sse_with_cuts(gw: GatewayProcess, cuts: list[int]) -> None:
    """Attach to a running fake-slow reply; after each cut (a count of SSE events)
    drop the stream and attach again after the last id, by `Last-Event-ID` or
    `?after=` in turn."""
    user = account()
    message_id, chat_id = await started_nadoo_reply(gw, user.token)
    url = attach_url(gw, chat_id, message_id)
    received: list[SSEEvent] = []
    last: str | None = None
    async with aiohttp.ClientSession() as http:
        for attempt, cut in enumerate([*cuts, None]):
            headers = {"Authorization": f"Bearer {user.token}"}
            params = {}
            if last is not None and attempt % 2:
                headers["Last-Event-ID"] = last
            elif last is not None:
                params["after"] = last
            async with http.get(url, headers=headers, params=params) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert resp.headers["Cache-Control"] == "no-cache"
                async for event in sse_events(resp):
                    received.append(event)
                    if event.id is not None:
                        last = event.id
                    if cut is not None and len(received) >= cut:
                        break
    ids = [int(e.id) for e in received if e.id is not None]
    # Each id once, increasing by one: no event twice, none missing.
    assert ids == list(range(LAST_SEQ + 1)), (cuts, ids)
    assert [e.data["content"] for e in received if e.type == "chat:message:delta"] == SLOW
    assert received[0].type == "chat:active" and received[0].data == {"active": True}
    completion = [e.data for e in received if e.type == "chat:completion"][-1]
    assert completion["done"] is True and completion["content"] == STORED
    assert received[-1].type == "chat:active" and received[-1].data == {"active": False}
    assert {(e.envelope["chat_id"], e.envelope["message_id"]) for e in received} == {
        (chat_id, message_id)
    }


async def test_sse_attach_resumes_at_random_cuts(gateway: GatewayProcess) -> None:
    # Events: chat:active (id 0), 64 deltas (ids 1..64), then the end as
    # chat:completion, chat:title and chat:active (id 65 on the last only): a cut
    # inside the end gets the whole end again.
    plans = cut_plans(random.Random(1606), 10, 1, 67)
    await asyncio.gather(*(sse_with_cuts(gateway, plan) for plan in plans))


# -- 2. the stored snapshot --------------------------------------------------------------
async def test_a_late_resume_gets_the_stored_snapshot_on_every_transport(
    gateways: dict[str, GatewayProcess],
) -> None:
    gw = gateways["short_ttl"]
    user = await ragflow_account(gw)

    async def ragflow_reply() -> dict[str, Any]:
        async with websockets.connect(ragflow_url(gw, user.ragflow_key)) as ws:
            await ws.send(ragflow_question(user))
            first = await recv_json(ws)
            while await recv_json(ws) != RAGFLOW_END:
                pass
        data: dict[str, Any] = first["data"]
        return data

    nadoo, rag = await asyncio.gather(nadoo_reply(gw, user.token), ragflow_reply())
    assert nadoo.end["full_response"] == STORED
    await asyncio.sleep(0.6)  # the replay TTL (0.3 s) must pass: nothing to await here

    # SSE attach: the snapshot, marked stored, then the end.
    url = attach_url(gw, nadoo.chat_id, nadoo.message_id)
    async with aiohttp.ClientSession() as http:
        for last_event_id in ("10", None):
            events = await sse_read_all(http, url, user.token, last_event_id)
            assert [(e.type, e.data) for e in events] == [
                ("chat:message", {"content": STORED, "snapshot": "stored"}),
                ("chat:completion", {"done": True, "content": STORED, "snapshot": "stored"}),
                ("chat:active", {"active": False}),
            ]

    # Socket.IO: the same events, after the ack.
    sock = await PySocket().connect(gw.url, user.token)
    try:
        ack = await sock.client.call(
            "events:chat",
            sio_resume(nadoo.chat_id, {nadoo.message_id: 10}),
            timeout=RECV_TIMEOUT_S,
        )
        assert ack == {"resumed": [nadoo.message_id], "unknown": []}
        await sock.wait_ended()
    finally:
        await sock.close()
    assert [(e["type"], e["data"]) for e in of(sock.events, nadoo.message_id)] == [
        ("chat:message", {"content": STORED, "snapshot": "stored"}),
        ("chat:completion", {"done": True, "content": STORED, "snapshot": "stored"}),
        ("chat:active", {"active": False}),
    ]

    # Nadoo: a snapshot frame, not exact, done; without the chat id it cannot be found.
    async with await nadoo_connect(gw, user.token) as ws:
        resume = {"type": "resume", "message_id": nadoo.message_id, "after": 10}
        await ws.send(json.dumps({**resume, "chat_id": nadoo.chat_id}))
        snapshot = await recv_json(ws)
        assert snapshot["type"] == "snapshot", snapshot
        assert {k: snapshot[k] for k in ("message_id", "chat_id", "content", "done", "exact")} == {
            "message_id": nadoo.message_id,
            "chat_id": nadoo.chat_id,
            "content": STORED,
            "done": True,
            "exact": False,
        }
        await ws.send(json.dumps(resume))
        error = await recv_json(ws)
        assert error["type"] == "error" and error["code"] == "not_found", error

    # RAGFlow: a chunk marked snapshot with the stored answer, then END.
    async with websockets.connect(ragflow_url(gw, user.ragflow_key)) as ws:
        resume = {"type": "resume", "message_id": rag["id"], "after": 10}
        await ws.send(json.dumps({**resume, "session_id": rag["session_id"]}))
        chunk = await recv_json(ws)
        assert chunk["code"] == 0, chunk
        assert chunk["data"]["snapshot"] is True and chunk["data"]["answer"] == STORED
        assert (chunk["data"]["id"], chunk["data"]["session_id"]) == (rag["id"], rag["session_id"])
        assert await recv_json(ws) == RAGFLOW_END


async def test_without_a_buffer_a_resume_gets_the_stored_draft_then_the_live_rest(
    gateways: dict[str, GatewayProcess],
) -> None:
    """GATEWAY_REPLAY_EVENTS=0: a mid-reply resume is served from the store (a stored
    snapshot of the draft, not exact), then the reply goes on live to its end."""
    gw = gateways["no_buffer"]

    async def nadoo() -> None:
        user = account()
        async with await nadoo_connect(gw, user.token) as ws:
            await ws.send(
                json.dumps({"type": "chat", "content": "go", "application_id": "fake-slow"})
            )
            start = await recv_json(ws)
            while (frame := await recv_json(ws))["seq"] < 5:
                pass
        async with await nadoo_connect(gw, user.token) as ws:
            resume = {"type": "resume", "message_id": start["message_id"], "after": frame["seq"]}
            await ws.send(json.dumps({**resume, "chat_id": start["chat_id"]}))
            frames = [await recv_json(ws)]
            while frames[-1]["type"] != "response_end":
                frames.append(await recv_json(ws))
        assert frames[0]["type"] == "snapshot" and frames[0]["exact"] is False, frames[0]
        assert frames[0]["done"] is False
        assert frames[-1]["full_response"] == STORED

    async def sse_and_socketio() -> None:
        user = account()
        message_id, chat_id = await started_nadoo_reply(gw, user.token)
        sock = await PySocket().connect(gw.url, user.token)
        try:
            ack = await sock.client.call(
                "events:chat", sio_resume(chat_id, {message_id: 3}), timeout=RECV_TIMEOUT_S
            )
            assert ack == {"resumed": [message_id], "unknown": []}
            async with aiohttp.ClientSession() as http:
                url = attach_url(gw, chat_id, message_id)
                events = await sse_read_all(http, url, user.token, "3")
            await sock.wait_ended()
        finally:
            await sock.close()
        assert events[0].type == "chat:message" and events[0].data["snapshot"] == "stored"
        completion = [e.data for e in events if e.type == "chat:completion"]
        assert len(completion) == 1 and completion[0]["content"] == STORED
        assert "snapshot" not in completion[0]  # the live end, not a stored one
        assert (events[-1].type, events[-1].data) == ("chat:active", {"active": False})
        got = of(sock.events, message_id)
        # The socket is in its user's room from its connect on: live deltas may reach it
        # before the resume does. The stored snapshot then replaces what they showed.
        first = next(i for i, e in enumerate(got) if e["data"].get("snapshot") == "stored")
        assert {e["type"] for e in got[:first]} <= {"chat:message:delta"}, got[:first]
        assert got[first]["type"] == "chat:message"
        completion = [e["data"] for e in got if e["type"] == "chat:completion"]
        assert len(completion) == 1 and completion[0]["content"] == STORED
        assert "snapshot" not in completion[0]

    async def ragflow() -> None:
        user = await ragflow_account(gw)
        async with websockets.connect(ragflow_url(gw, user.ragflow_key)) as ws:
            await ws.send(ragflow_question(user))
            while (first := await recv_json(ws))["data"]["seq"] < 5:
                pass
        data = first["data"]
        async with websockets.connect(ragflow_url(gw, user.ragflow_key)) as ws:
            resume = {"type": "resume", "message_id": data["id"], "after": data["seq"]}
            await ws.send(json.dumps({**resume, "session_id": data["session_id"]}))
            frames = [await recv_json(ws)]
            while frames[-1] != RAGFLOW_END:
                frames.append(await recv_json(ws))
        chunks = [f["data"] for f in frames[:-1]]
        assert chunks[0]["snapshot"] is True
        assert chunks[-1]["final"] is True
        # The answer as stored, read back over RAGFlow's HTTP API.
        listed = await post_json(
            f"{gw.url}/ragflow/api/v1/chats/{user.assistant_id}/sessions?id={data['session_id']}",
            user.ragflow_key,
            None,
            method="GET",
        )
        messages = listed["data"][0]["messages"]
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == STORED

    await asyncio.gather(nadoo(), sse_and_socketio(), ragflow())


# -- 3. another user's reply ---------------------------------------------------------
async def test_another_users_reply_is_refused_on_every_transport(
    gateway: GatewayProcess,
) -> None:
    owner = account()
    intruder = await ragflow_account(gateway)
    watcher = await PySocket().connect(gateway.url, intruder.token)  # any leak lands here
    owner_ws = await nadoo_connect(gateway, owner.token)
    nadoo_ws = await nadoo_connect(gateway, intruder.token)
    rag_ws = await websockets.connect(ragflow_url(gateway, intruder.ragflow_key))
    try:
        await owner_ws.send(
            json.dumps({"type": "chat", "content": "mine", "application_id": "fake-slow"})
        )
        start = await recv_json(owner_ws)
        message_id, chat_id = start["message_id"], start["chat_id"]
        url = attach_url(gateway, chat_id, message_id)

        async def try_everything() -> None:
            async with aiohttp.ClientSession() as http:
                for last_event_id in (None, "3"):
                    headers = {"Authorization": f"Bearer {intruder.token}"}
                    if last_event_id is not None:
                        headers["Last-Event-ID"] = last_event_id
                    async with http.get(url, headers=headers) as resp:
                        assert resp.status == 404
                        assert "w1 " not in await resp.text()
            ack = await watcher.client.call(
                "events:chat", sio_resume(chat_id, {message_id: -1}), timeout=RECV_TIMEOUT_S
            )
            assert ack == {"resumed": [], "unknown": [message_id]}
            resume = {"type": "resume", "message_id": message_id, "after": 3}
            for frame in (resume, {**resume, "chat_id": chat_id}):
                await nadoo_ws.send(json.dumps(frame))
                error = await recv_json(nadoo_ws)
                assert error["type"] == "error" and error["code"] == "not_found", error
            for frame in (resume, {**resume, "session_id": chat_id}):
                await rag_ws.send(json.dumps(frame))
                error = await recv_json(rag_ws)
                assert error["code"] == 102, error
                assert error["data"]["answer"].startswith("**ERROR**")

        await try_everything()  # while it runs
        while (frame := await recv_json(owner_ws))["type"] != "response_end":
            pass
        assert frame["full_response"] == STORED
        await try_everything()  # once it is over (the buffer and the store know it)

        # Nothing of it came to the intruder: the next frame on each socket is the
        # answer to a frame sent after the reply ended.
        await nadoo_ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(nadoo_ws))["type"] == "pong"
        await rag_ws.send("{not json")
        assert (await recv_json(rag_ws))["code"] == 400
        ack = await watcher.client.call(
            "events:chat", sio_resume(chat_id, {"no-such-reply": -1}), timeout=RECV_TIMEOUT_S
        )
        assert ack == {"resumed": [], "unknown": ["no-such-reply"]}
        assert watcher.events == []
    finally:
        await owner_ws.close()
        await nadoo_ws.close()
        await rag_ws.close()
        await watcher.close()
    # The owner, for contrast, is served (the ids were right).
    async with aiohttp.ClientSession() as http:
        events = await sse_read_all(http, url, owner.token, str(len(SLOW)))
    assert [e.type for e in events if e.type != "chat:title"] == [
        "chat:completion",
        "chat:active",
    ]


# -- 4. malformed resumes ------------------------------------------------------------
BAD_RESUMES: list[dict[str, Any]] = [
    {"type": "resume"},
    {"type": "resume", "after": 3},
    {"type": "resume", "message_id": "", "after": 3},
    {"type": "resume", "message_id": 7, "after": 3},
    {"type": "resume", "message_id": "m", "after": "abc"},
    {"type": "resume", "message_id": "m", "after": -2},
    {"type": "resume", "message_id": "m", "after": 1.5},
    {"type": "resume", "message_id": "m", "after": True},
]


async def test_a_bad_nadoo_resume_gets_a_bad_resume_error_frame(gateway: GatewayProcess) -> None:
    user = account()
    frames = [
        *BAD_RESUMES,
        {"type": "resume", "message_id": "m", "after": 3, "chat_id": ""},
        {"type": "resume", "message_id": "m", "after": 3, "chat_id": 5},
    ]
    async with await nadoo_connect(gateway, user.token) as ws:
        for frame in frames:
            await ws.send(json.dumps(frame))
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == "bad_resume", (frame, error)
            assert "resume" in error["message"]
            assert error["data"] == {"message": error["message"], "code": "bad_resume"}
        # The socket stays open.
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"


async def test_a_bad_ragflow_resume_gets_an_error_frame(gateway: GatewayProcess) -> None:
    user = await ragflow_account(gateway)
    frames = [
        *BAD_RESUMES,
        {"type": "resume", "message_id": "m", "after": 3, "session_id": ""},
        {"type": "resume", "message_id": "m", "after": 3, "session_id": ["x"]},
    ]
    async with websockets.connect(ragflow_url(gateway, user.ragflow_key)) as ws:
        for frame in frames:
            await ws.send(json.dumps(frame))
            error = await recv_json(ws)
            assert error["code"] == 400, (frame, error)
            assert "resume" in error["message"]
            assert error["data"] == {"answer": f"**ERROR**: {error['message']}", "reference": []}
        # Still open, still answering.
        await ws.send(ragflow_question(user))
        chunks = []
        while (frame := await recv_json(ws)) != RAGFLOW_END:
            chunks.append(frame["data"])
    assert "".join(c["answer"] for c in chunks) == SLOW_TEXT


async def test_a_bad_last_event_id_is_a_400(gateway: GatewayProcess) -> None:
    user = account()
    run = await nadoo_reply(gateway, user.token)
    url = attach_url(gateway, run.chat_id, run.message_id)
    headers = {"Authorization": f"Bearer {user.token}"}
    async with aiohttp.ClientSession() as http:
        for bad in ("abc", "-5", "1.5", "0x10", "9" * 40):
            async with http.get(url, headers={**headers, "Last-Event-ID": bad}) as resp:
                assert resp.status == 400, bad
                assert "Last-Event-ID" in await resp.text()
            async with http.get(url, headers=headers, params={"after": bad}) as resp:
                assert resp.status == 400, bad
        # The same stream with a good one is served.
        events = await sse_read_all(http, url, user.token, str(len(SLOW) - 1))
    assert [e.data["content"] for e in events if e.type == "chat:message:delta"] == SLOW[-1:]


async def test_a_bad_socketio_resume_is_acked_with_a_bad_resume_error(
    gateway: GatewayProcess,
) -> None:
    # As the raw WebSocket flavours tell it: an empty ack read as "nothing to resume".
    user = account()
    sock = await PySocket().connect(gateway.url, user.token)
    try:
        for after in ({"m": "x"}, {"m": -7}, {"m": None}, {"m": [1]}, {"m": True}, {}, "m"):
            ack = await sock.client.call(
                "events:chat",
                {"chat_id": "c1", "data": {"type": "resume", "after": after}},
                timeout=RECV_TIMEOUT_S,
            )
            assert ack["error"]["code"] == "bad_resume", (after, ack)
            assert "resume" in ack["error"]["message"], ack
        many = {f"m{i}": 0 for i in range(40)}  # past the 32 one resume may name
        ack = await sock.client.call("events:chat", sio_resume("c1", many), timeout=RECV_TIMEOUT_S)
        assert ack["error"]["code"] == "bad_resume", ack
        # A good one of an unknown reply is still "unknown", and the socket still answers.
        ack = await sock.client.call(
            "events:chat", sio_resume("c1", {"m": 3}), timeout=RECV_TIMEOUT_S
        )
        assert ack == {"resumed": [], "unknown": ["m"]}
    finally:
        await sock.close()
