"""A rolling restart of two replicas under live traffic loses nothing.

Replicas A and B share one Redis and one PostgreSQL database, with a grace period
(GATEWAY_SHUTDOWN_GRACE_S) far longer than a reply.  Clients of three transports —
Nadoo's raw WebSocket, Open WebUI's Socket.IO (python-socketio) and OpenAI's SSE
(`/v1/chat/completions`, stream=true) — ask fake-slow (64 deltas, 20 ms apart) one
reply after another, each on a replica that answers `GET /ready?upstreams=0` with
200, in turn, as a balancer does.

While replies of every transport run on both, A gets SIGTERM: its `/ready` is 503 at
once, no reply starts there after that (the clients' probes send them to B), the
replies it was running all reach their end, and it exits 0 after them, well within
the grace.  It starts again (same port, data dir and database) and is ready; then
the same for B.  At the end every reply started was received whole and exactly as
the fake upstream sent it (no duplicate, no gap), the fake served each once and to
its end, and each stored one (Nadoo's and the web app's: the OpenAI API stores
nothing) is read back complete from a running replica."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import websockets

from tests.api.test_nadoo_ws import recv, ws_url
from tests.api.test_nadoo_ws import user as nadoo_user
from tests.clients import (
    PySocket,
    completion_of,
    content_of,
    ended,
    get_json,
    post_json,
    turn_body,
)
from tests.fakes.upstream import FakeUpstream, deltas_of
from tests.gatewayproc import GatewayProcess, make_token

Start = Callable[..., GatewayProcess]

MODEL = "fake-slow"
SLOW_TEXT = "".join(deltas_of(MODEL, ""))
# What a reply's end carries and the store keeps: the text trimmed, as Open WebUI trims it.
STORED = SLOW_TEXT.strip()
GRACE_S = 30
TRANSPORTS = ("nadoo", "socketio", "openai")
# The transports whose replies are stored (a pure OpenAI API stream stores nothing).
KEPT_BY = ("nadoo", "socketio")
CLIENTS_PER_TRANSPORT = 3
REPLY_TIMEOUT_S = 15
PHASES = ("both", "a stopping", "a back", "b stopping", "b back")


@dataclass
class Replica:
    name: str
    proc: GatewayProcess
    # Which process on this port: bumped once the old one has exited.
    generation: int = 1

    @property
    def label(self) -> str:
        return f"{self.name}{self.generation}"


@dataclass
class Probe:
    replica: str  # its name: a or b
    label: str  # which process was there when it was sent (it can change only once
    # the process has exited): a1, b1, a2, b2
    sent_at: float
    status: int  # 0: nothing listens


@dataclass
class Reply:
    transport: str
    replica: str  # its label: a1, b1, a2, b2
    phase: str
    question: str
    token: str
    # When the `/ready` that chose the replica was sent.
    probed_at: float
    text: str = ""
    ended_at: float | None = None
    chat_id: str | None = None
    message_id: str | None = None
    problems: list[str] = field(default_factory=list)
    # Socket.IO: the events of other replies the socket was sent.
    foreign: list[dict[str, Any]] = field(default_factory=list)

    def running(self) -> bool:
        """Streaming: some text in, no end yet."""
        return bool(self.text) and self.ended_at is None and not self.problems


@dataclass
class Traffic:
    replicas: list[Replica]
    phase: str = PHASES[0]
    replies: list[Reply] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def pick(self, http: aiohttp.ClientSession, turn: int) -> tuple[Replica, str, float]:
        """What a balancer does: the next replica, in turn, that says it is ready."""
        while True:
            for offset in range(len(self.replicas)):
                replica = self.replicas[(turn + offset) % len(self.replicas)]
                label, sent_at = replica.label, time.monotonic()
                try:
                    async with http.get(f"{replica.proc.url}/ready?upstreams=0") as resp:
                        status = resp.status
                        await resp.read()
                except aiohttp.ClientConnectionError:
                    status = 0
                self.probes.append(Probe(replica.name, label, sent_at, status))
                if status == 200:
                    return replica, label, sent_at
            await asyncio.sleep(0.05)

    def on(self, label: str) -> list[Reply]:
        return [r for r in self.replies if r.replica == label]

    async def until(self, what: str, check: Callable[[], bool], timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"no {what} in {timeout_s} s"
            await asyncio.sleep(0.02)

    def each_transport_on(self, labels: list[str], when: Callable[[Reply], bool]) -> bool:
        return all(
            any(r.transport == t and when(r) for r in self.on(label))
            for t in TRANSPORTS
            for label in labels
        )


# -- the clients: one reply each ------------------------------------------------------------
async def nadoo(http: aiohttp.ClientSession, replica: GatewayProcess, reply: Reply) -> None:
    session = f"roll-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(replica, f"/ws/chat/{session}", reply.token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        ask = {"type": "chat", "content": reply.question, "application_id": MODEL}
        await ws.send(json.dumps(ask))
        start = await recv(ws, REPLY_TIMEOUT_S)
        assert start["type"] == "response_start", start
        reply.chat_id, reply.message_id = start["chat_id"], start["message_id"]
        indexes: list[int] = []
        while (frame := await recv(ws, REPLY_TIMEOUT_S))["type"] != "response_end":
            assert frame["type"] == "text-delta", frame
            reply.text += frame["text"]
            indexes.append(frame["index"])
        reply.ended_at = time.monotonic()
    assert indexes == list(range(len(indexes))), indexes
    assert frame["message_id"] == reply.message_id, frame
    assert frame["full_response"] == STORED and not frame.get("cancelled"), frame


async def socketio(http: aiohttp.ClientSession, replica: GatewayProcess, reply: Reply) -> None:
    sock = await PySocket().connect(replica.url, reply.token)
    try:
        body = turn_body(sock.sid, reply.question, model=MODEL)
        answer = await post_json(f"{replica.url}/api/chat/completions", reply.token, body)
        reply.chat_id, reply.message_id = answer["chat_id"], body["id"]

        # As the web app does: each event goes to the message it names.
        def progressed(events: list[dict[str, Any]]) -> bool:
            reply.text = content_of(events, body["id"])
            return any(ended(e) and e["message_id"] == body["id"] for e in events)

        await sock.wait_until(progressed, REPLY_TIMEOUT_S)
        reply.ended_at = time.monotonic()
        reply.foreign = [e for e in sock.events if e["message_id"] != body["id"]]
        completion = completion_of(sock.events, body["id"])
        assert completion["content"] == STORED and not completion.get("cancelled"), completion
    finally:
        await sock.close()


async def openai(http: aiohttp.ClientSession, replica: GatewayProcess, reply: Reply) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": reply.question}],
    }
    headers = {"Authorization": f"Bearer {reply.token}"}
    finish, done = None, False
    async with http.post(f"{replica.url}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: ") :])
            reply.message_id = chunk["id"]
            for choice in chunk["choices"]:
                reply.text += choice["delta"].get("content") or ""
                finish = choice.get("finish_reason") or finish
        reply.ended_at = time.monotonic()
    assert done and finish == "stop", (done, finish)


RUN: dict[str, Callable[[aiohttp.ClientSession, GatewayProcess, Reply], Awaitable[None]]] = {
    "nadoo": nadoo,
    "socketio": socketio,
    "openai": openai,
}


async def client(traffic: Traffic, transport: str, index: int) -> None:
    """One client of `transport` (one user): a reply after another until the traffic
    stops; what goes wrong is kept with the reply, for the end of the test."""
    if transport == "nadoo":
        _, token = nadoo_user()
    else:
        token = make_token(f"roll-{transport}-{uuid.uuid4().hex[:8]}")
    # No kept-alive connection: a stopped replica's would be a stale one.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for turn in range(index, 10_000):
            if traffic.stop.is_set():
                return
            phase = traffic.phase
            replica, label, probed_at = await traffic.pick(http, turn)
            question = f"roll {transport}-{index}-{turn} {uuid.uuid4().hex}"
            reply = Reply(transport, label, phase, question, token, probed_at)
            traffic.replies.append(reply)
            try:
                await asyncio.wait_for(RUN[transport](http, replica.proc, reply), REPLY_TIMEOUT_S)
            except Exception:
                reply.problems.append(traceback.format_exc(limit=4))


# -- the replicas -------------------------------------------------------------------------
async def until_ready(replica: Replica, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{replica.proc.url}/ready?upstreams=0") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, f"{replica.label} not ready in {timeout_s} s"
            await asyncio.sleep(0.05)


async def roll(traffic: Traffic, victim: Replica, other: Replica) -> None:
    """SIGTERM `victim` while replies run on both; check its stop; start it again."""
    phase = traffic.phase
    await traffic.until(
        f"replies of every transport started {phase!r} running on {victim.label} and {other.label}",
        lambda: traffic.each_transport_on(
            [victim.label, other.label], lambda r: r.phase == phase and r.running()
        ),
    )
    process = victim.proc.proc
    assert process is not None
    stopping = f"{victim.name} stopping"
    # No await between the snapshot and the signal: these run there when it comes.
    in_flight = [r for r in traffic.on(victim.label) if r.running()]
    traffic.phase = stopping
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)

    # Not ready at once (the signal is handled within a tick).
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(f"{victim.proc.url}/ready?upstreams=0") as resp:
                answer = await resp.json()
            if resp.status == 503:
                break
            await asyncio.sleep(0.02)
    not_ready_at = time.monotonic()
    assert resp.status == 503 and answer == {"ready": False, "checks": {"replica": "failed"}}, (
        resp.status,
        answer,
    )
    assert not_ready_at - signalled < 1.0

    code = await asyncio.to_thread(process.wait, GRACE_S + 10)
    exited_at = time.monotonic()
    log = victim.proc.log()
    assert code == 0, log[-3000:]
    # Once the replies it ran had ended, not at the end of the grace.
    assert exited_at - signalled < GRACE_S / 2, exited_at - signalled
    assert "stopping: waiting for running replies" in log
    assert "replies still running after the grace period are stopped" not in log
    # Its running replies reached their end, whole, before it went.
    for reply in in_flight:
        assert reply.ended_at is not None and reply.ended_at <= exited_at, reply
        assert reply.text == SLOW_TEXT and not reply.problems, reply
    # No client was told it was ready, nor started anything there, once it was not.
    told = [p for p in traffic.probes if p.label == victim.label and p.sent_at > not_ready_at]
    assert [p for p in told if p.status == 200] == []
    assert [r for r in traffic.on(victim.label) if r.probed_at > not_ready_at] == []
    refused = sum(p.status == 503 for p in told)
    assert refused > 0, "no client asked the stopping replica"
    print(
        f"{victim.label}: SIGTERM with {len(in_flight)} replies streaming "
        f"({dict(Counter(r.transport for r in in_flight))}); /ready 503 after "
        f"{not_ready_at - signalled:.3f} s; exit 0 after {exited_at - signalled:.2f} s"
    )

    # Again, on the same port, data dir and database.
    victim.generation += 1
    await asyncio.to_thread(victim.proc.start)
    await until_ready(victim)
    back_at = time.monotonic()
    traffic.phase = f"{victim.name} back"
    # Meanwhile the other took the new replies, of every transport.
    assert traffic.each_transport_on([other.label], lambda r: r.phase == stopping)
    gone = sum(
        p.replica == victim.name and p.status == 0 and not_ready_at < p.sent_at < back_at
        for p in traffic.probes
    )
    print(
        f"{victim.label}: ready {back_at - signalled:.2f} s after the SIGTERM; clients' "
        f"probes of it: {refused} answered 503 while it stopped, then {gone} found nothing"
    )


# -- the test -------------------------------------------------------------------------------
async def test_a_rolling_restart_of_two_replicas_loses_no_reply(
    cluster: Start, fake_upstream: FakeUpstream
) -> None:
    began = time.monotonic()
    grace = {"GATEWAY_SHUTDOWN_GRACE_S": str(GRACE_S)}
    a, b = Replica("a", cluster("a", extra=grace)), Replica("b", cluster("b", extra=grace))
    for replica in (a, b):
        await until_ready(replica)
    traffic = Traffic([a, b])
    clients = [
        asyncio.create_task(client(traffic, transport, index))
        for transport in TRANSPORTS
        for index in range(CLIENTS_PER_TRANSPORT)
    ]
    try:
        await roll(traffic, a, b)
        await roll(traffic, b, a)
        # Both serve again: a reply of every transport ends on each.
        await traffic.until(
            "replies ended on both restarted replicas",
            lambda: traffic.each_transport_on(
                [a.label, b.label], lambda r: r.phase == "b back" and r.ended_at is not None
            ),
        )
    finally:
        traffic.stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), REPLY_TIMEOUT_S + 5)
    replies = traffic.replies

    # Counts, per transport, per replica and per phase: ended whole / started.
    complete = [r for r in replies if r.ended_at is not None and r.text == SLOW_TEXT]
    for name in ("transport", "replica", "phase"):
        started = Counter(getattr(r, name) for r in replies)
        whole = Counter(getattr(r, name) for r in complete)
        print(f"per {name}: " + ", ".join(f"{k} {whole[k]}/{n}" for k, n in started.items()))
    per_phase = Counter((r.phase, r.transport) for r in replies)
    assert all(per_phase[(phase, t)] > 0 for phase in PHASES for t in TRANSPORTS), per_phase
    per_replica = Counter((r.replica, r.transport) for r in replies)
    labels = ("a1", "b1", "a2", "b2")
    assert all(per_replica[(label, t)] > 0 for label in labels for t in TRANSPORTS), per_replica

    # Each reply whole and exact, as its client received it.
    problems = [r for r in replies if r.problems]
    assert problems == [], "\n".join(f"{r}" for r in problems)
    assert [r for r in replies if r.ended_at is None or r.text != SLOW_TEXT] == []
    # A web-app socket is sent the running replies of its user when it opens, each as
    # its text so far: one that opens just as the previous reply ends may be sent that
    # one too (as the buffer lists it).  Then it is that reply, whole, nothing else.
    earlier = {r.message_id: r for r in replies}
    for reply in replies:
        for event in reply.foreign:
            other = earlier.get(event["message_id"])
            assert other is not None and other.token == reply.token, (reply, event)
            assert other.ended_at is not None and other.ended_at <= reply.probed_at, event
            if event["type"] == "chat:message":  # its text so far: all of it
                assert event["data"]["content"] == SLOW_TEXT, event
            elif event["type"] == "chat:completion":
                assert event["data"]["content"] == STORED, event
    foreign = sum(bool(r.foreign) for r in replies)

    # The fake upstream was asked each once, and sent it to its end.
    for reply in replies:
        asked = [q for q in fake_upstream.requests_for(reply.question) if q.body["model"] == MODEL]
        assert len(asked) == 1, (reply, len(asked))
        assert await asyncio.to_thread(asked[0].ended.wait, 5)
        assert asked[0].finished and not asked[0].disconnected, reply

    # Each stored reply is stored whole, done, read back from a running replica.
    async def stored(reply: Reply, replica: Replica) -> None:
        chat = await get_json(f"{replica.proc.url}/api/v1/chats/{reply.chat_id}", reply.token)
        message = chat["chat"]["history"]["messages"][reply.message_id]
        assert message["done"] is True and message["content"] == STORED, (reply, message)

    kept = [r for r in replies if r.transport in KEPT_BY]
    await asyncio.gather(*(stored(r, (a, b)[i % 2]) for i, r in enumerate(kept)))
    print(
        f"{len(replies)} replies started, {len(complete)} received whole and exact, "
        f"{len(kept)} read back stored; {foreign} web-app sockets were also sent their "
        f"user's previous reply; {time.monotonic() - began:.1f} s"
    )
