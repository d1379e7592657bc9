"""Every flavour against a bare relay of its own shape: added TTFT and CPU per chunk.

    python -m bench.bench_flavours [--quick] [--streams 200] [--deltas 32] [--flavours openai-sse,...]

One paced upstream (`bench.servers upstream`), one bare relay of every flavour
(`bench.servers flavour-relay`) and one gateway (`bench.common.start_gateway`)
in front of it, all started once.  For each flavour and each level of
concurrency (1 stream, then N at once) the same client load goes, one path
after the other:

* `direct`  — straight to the upstream (SSE flavours only): the TTFT floor;
* `relay`   — the bare relay: reads the upstream's SSE and writes each delta in
              the flavour's frame and transport, nothing more (no auth, store or
              fan-out): the baseline for TTFT and CPU;
* `gateway` — the gateway, asked as that flavour's clients ask it.

Flavours and how the client asks (the same request to relay and gateway):

* `openai-sse`  — POST /v1/chat/completions, stream: true; a chunk is an SSE
                  event with non-empty `delta.content`;
* `ragflow-sse` — POST /ragflow/api/v1/chats/{assistant}/completions with a
                  RAGFlow key (`/ragflow/v1/system/new_token`), `stream: true`
                  and a fresh session made beforehand (without one RAGFlow only
                  answers the opener); default cumulative `answer`s;
* `ragflow-ws`  — /ragflow/v1/ws/chat?token=<key>, one socket per stream, one
                  frame `{"type": "chat", "chat_id", "question"}` per question
                  (which opens a session, as the docs' client does); delta answers;
* `nadoo-ws`    — /ws/chat/{session}?token=<jwt>, one socket per stream, one
                  frame `{"type": "chat", "content", "application_id"}` per
                  question (a new chat each); a chunk is a `text-delta`;
* `socketio`    — python-socketio client on /ws/socket.io (websocket, auth
                  token), POST /api/chat/completions naming the socket in
                  `session_id` (the web app's turn, a new chat each); a chunk is
                  an `events` `chat:message:delta`.

Each stream is its own user (a JWT, and for RAGFlow a key and an assistant of
theirs), so no per-user limit is reached.  Per path and level:

* `ttft_ms`  — per stream, the time from sending the request (HTTP POST or
               WebSocket frame) to the first content delta;
* `cpu_us_per_chunk` — user + system CPU of the relay's or gateway's process
               (from /proc) over the measured rounds ÷ chunks delivered (None
               for `direct`: the upstream's CPU is not the subject);
* `chunks`   — content deltas the clients received (expected: streams ×
               rounds × deltas; a stream whose text differs from the upstream's
               is reported on stderr);
* `max_gap_ms` — the largest gap between consecutive chunks of one stream.

CPU comes from /proc in clock ticks (10 ms): a quick run's few hundred chunks
are a handful of ticks, so its CPU figures are indicative only; the default
run's 200-stream rows are over 100 ticks each.

Connections, users, keys, assistants and sessions are made before the CPU
window; one warm-up round runs before it.  1 stream: 30 rounds one after
the other (12 quick); N streams: 3 rounds of N at once (N = 20 quick).
The upstream streams 32 deltas 20 ms apart (16 deltas 10 ms apart quick):
half bench_sse's 64, so the 1-stream rounds fit in a few minutes, and a
reply's fixed costs weigh twice what they weigh there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp
import jwt
import socketio

from bench.common import (
    BENCH_SECRET,
    cpu_seconds,
    free_port,
    machine,
    percentile,
    start,
    start_gateway,
)

FLAVOURS = ("openai-sse", "ragflow-sse", "ragflow-ws", "nadoo-ws", "socketio")
SSE_FLAVOURS = ("openai-sse", "ragflow-sse")
MODEL = "bench"  # the paced upstream's one model
QUESTION = "hi"


@dataclass(frozen=True)
class Plan:
    deltas: int
    delay_s: float
    streams: int  # N, the second level
    rounds_one: int  # rounds at 1 stream (one TTFT sample each)
    rounds_many: int  # rounds of N streams at once

    @property
    def levels(self) -> list[int]:
        return [1, self.streams]

    def rounds(self, level: int) -> int:
        return self.rounds_one if level == 1 else self.rounds_many

    @property
    def text(self) -> str:
        """The whole reply of the paced upstream."""
        return "".join(f"tok{index} " for index in range(self.deltas))


def plan(quick: bool, streams: int | None = None, deltas: int | None = None) -> Plan:
    if quick:
        made = Plan(deltas=16, delay_s=0.01, streams=streams or 20, rounds_one=12, rounds_many=3)
    else:
        made = Plan(deltas=32, delay_s=0.02, streams=streams or 200, rounds_one=30, rounds_many=3)
    if not deltas:
        return made
    # A longer reply: as many deltas at one stream in all (at least 5 rounds).
    rounds_one = max(5, made.rounds_one * made.deltas // deltas)
    return replace(made, deltas=deltas, rounds_one=rounds_one)


@dataclass
class Stream:
    """One reply as its client saw it."""

    began: float = field(default_factory=time.perf_counter)
    times: list[float] = field(default_factory=list)
    text: str = ""
    error: str | None = None

    def chunk(self, at: float, text: str) -> None:
        self.times.append(at)
        self.text += text

    def fail(self, error: str) -> None:
        self.error = self.error or error


@dataclass(frozen=True)
class Servers:
    upstream: str  # http://127.0.0.1:PORT/v1
    relay: str  # http://127.0.0.1:PORT
    gateway: str
    relay_pid: int
    gateway_pid: int


class Client(Protocol):
    async def open(self, turns: int) -> None:
        """Connect, and make whatever `turns` turns need before the CPU window."""

    async def turn(self, index: int, stream: Stream) -> None:
        """One question and its whole reply, recorded into `stream`."""

    async def close(self) -> None: ...


# -- the gateway's identities: one user per stream ----------------------------------
class Identities:
    """A JWT per stream index, and (made on first use, then kept) a RAGFlow key and
    an assistant of that user.  User ids are fresh each run: a run never finds the
    chats of an earlier one under its users."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.run = uuid.uuid4().hex[:8]
        self._ragflow: dict[int, tuple[str, str]] = {}

    def user(self, index: int) -> str:
        return f"bench-{self.run}-{index}"

    def jwt(self, index: int) -> str:
        return jwt.encode({"id": self.user(index)}, BENCH_SECRET, algorithm="HS256")

    async def ragflow(self, index: int, http: aiohttp.ClientSession) -> tuple[str, str]:
        """(the user's RAGFlow key, an assistant of theirs answering with MODEL)."""
        if index not in self._ragflow:
            made = await _ragflow_call(
                http, f"{self.gateway}/ragflow/v1/system/new_token", self.jwt(index), None
            )
            key = made["token"]
            body = {"name": f"bench {uuid.uuid4().hex[:8]}", "llm": {"model_name": MODEL}}
            assistant = await _ragflow_call(http, f"{self.gateway}/ragflow/api/v1/chats", key, body)
            self._ragflow[index] = (key, assistant["id"])
        return self._ragflow[index]

    async def ragflow_session(self, index: int, http: aiohttp.ClientSession) -> str:
        key, assistant = await self.ragflow(index, http)
        url = f"{self.gateway}/ragflow/api/v1/chats/{assistant}/sessions"
        session = await _ragflow_call(http, url, key, {"name": "bench"})
        return str(session["id"])


async def _ragflow_call(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(url, json=body, headers=headers) as resp:
        answer = await resp.json(content_type=None)
    if resp.status != 200 or answer.get("code") != 0:
        raise RuntimeError(f"{url}: HTTP {resp.status} {answer}")
    return answer["data"]


# -- SSE clients ---------------------------------------------------------------------
def openai_payload(payload: Any, at: float, stream: Stream) -> None:
    if "error" in payload:
        stream.fail(f"error event {payload['error']}")
        return
    choices = payload.get("choices")
    if choices and (text := choices[0].get("delta", {}).get("content")):
        stream.chunk(at, text)


def ragflow_payload(payload: Any, at: float, stream: Stream, cumulative: bool) -> bool:
    """Record one RAGFlow chunk; True at the end marker."""
    if payload.get("code") != 0:
        stream.fail(f"code {payload.get('code')}: {payload.get('message')}")
        return False
    data = payload["data"]
    if data is True:
        return True
    if isinstance(data, dict) and (answer := data.get("answer")):
        if cumulative:
            if not answer.startswith(stream.text):
                stream.fail(f"cumulative answer {answer!r} does not extend {stream.text!r}")
            answer = answer[len(stream.text) :]
        stream.chunk(at, answer)
    return False


class SseClient:
    """One HTTP request per turn, its SSE read line by line."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        body: Callable[[int], dict[str, Any]],
        ragflow: bool,
    ) -> None:
        self.http, self.url, self.headers, self.body, self.ragflow = (
            http,
            url,
            headers,
            body,
            ragflow,
        )

    async def open(self, turns: int) -> None:
        pass

    async def turn(self, index: int, stream: Stream) -> None:
        body = self.body(index)
        stream.began = time.perf_counter()
        async with self.http.post(self.url, json=body, headers=self.headers) as resp:
            if resp.status != 200:
                stream.fail(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                return
            async for line in resp.content:
                at = time.perf_counter()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                payload = json.loads(data)
                if self.ragflow:
                    ragflow_payload(payload, at, stream, cumulative=True)
                else:
                    openai_payload(payload, at, stream)

    async def close(self) -> None:
        pass


class RagflowSseClient(SseClient):
    """A fresh session per turn, made in `open` (on the gateway)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        ids: Identities | None,
        index: int,
    ) -> None:
        super().__init__(http, "", {}, self._body, ragflow=True)
        self.base, self.ids, self.index = base, ids, index
        self.sessions: list[str] = []

    def _body(self, turn: int) -> dict[str, Any]:
        return {"question": QUESTION, "stream": True, "session_id": self.sessions[turn]}

    async def open(self, turns: int) -> None:
        if self.ids is None:  # the relay: any assistant, any session
            self.url = f"{self.base}/ragflow/api/v1/chats/relay/completions"
            self.sessions = [uuid.uuid4().hex for _ in range(turns)]
            return
        key, assistant = await self.ids.ragflow(self.index, self.http)
        self.url = f"{self.base}/ragflow/api/v1/chats/{assistant}/completions"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.sessions = [
            await self.ids.ragflow_session(self.index, self.http) for _ in range(turns)
        ]


# -- raw WebSocket clients -----------------------------------------------------------
class WsClient:
    """One socket per stream for all its turns; one frame per question."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, url: str) -> None:
        self.ws = await self.http.ws_connect(url, autoping=True, max_msg_size=0)

    async def frames(self, stream: Stream) -> AsyncIterator[tuple[float, Any]]:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            at = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.TEXT:
                stream.fail(f"socket {msg.type.name} {msg.data!r} {msg.extra!r}")
                return
            yield at, json.loads(msg.data)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class RagflowWsClient(WsClient):
    def __init__(
        self, http: aiohttp.ClientSession, base: str, ids: Identities | None, index: int
    ) -> None:
        super().__init__(http)
        self.base, self.ids, self.index = base, ids, index
        self.assistant = "relay"

    async def open(self, turns: int) -> None:
        ws_base = self.base.replace("http://", "ws://")
        token = "relay"
        if self.ids is not None:
            token, self.assistant = await self.ids.ragflow(self.index, self.http)
        await self.connect(f"{ws_base}/ragflow/v1/ws/chat?token={token}")

    async def turn(self, index: int, stream: Stream) -> None:
        assert self.ws is not None
        frame = {"type": "chat", "chat_id": self.assistant, "question": QUESTION, "stream": True}
        stream.began = time.perf_counter()
        await self.ws.send_str(json.dumps(frame))
        async for at, payload in self.frames(stream):
            # An error frame is followed by the end marker too: read up to it.
            if ragflow_payload(payload, at, stream, cumulative=False):
                return


class NadooWsClient(WsClient):
    def __init__(
        self, http: aiohttp.ClientSession, base: str, ids: Identities | None, index: int
    ) -> None:
        super().__init__(http)
        self.base, self.ids, self.index = base, ids, index

    async def open(self, turns: int) -> None:
        ws_base = self.base.replace("http://", "ws://")
        token = self.ids.jwt(self.index) if self.ids is not None else "relay"
        session = f"bench-{uuid.uuid4().hex[:8]}"
        await self.connect(f"{ws_base}/ws/chat/{session}?token={token}")
        assert self.ws is not None
        first = json.loads(await self.ws.receive_str())
        if first.get("type") != "connected":
            raise RuntimeError(f"nadoo socket opened with {first}")

    async def turn(self, index: int, stream: Stream) -> None:
        assert self.ws is not None
        frame = {"type": "chat", "content": QUESTION, "application_id": MODEL}
        stream.began = time.perf_counter()
        await self.ws.send_str(json.dumps(frame))
        async for at, payload in self.frames(stream):
            kind = payload.get("type")
            if kind == "text-delta":
                stream.chunk(at, payload["text"])
            elif kind == "response_end":
                # The stored reply is stripped, as Open WebUI strips it.
                if payload.get("full_response") not in (stream.text, stream.text.strip()):
                    stream.fail("response_end's full_response differs from the deltas")
                return
            elif kind == "error":
                stream.fail(f"error frame {payload}")
                return


# -- Socket.IO -----------------------------------------------------------------------
class SioClient:
    """A python-socketio client (websocket transport); a turn is the web app's POST
    naming the socket, its reply read from `events`."""

    def __init__(
        self, http: aiohttp.ClientSession, base: str, ids: Identities | None, index: int
    ) -> None:
        self.http, self.base, self.ids, self.index = http, base, ids, index
        self.token = ids.jwt(index) if ids is not None else "relay"
        self.own_http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.own_http)
        self.sio.on("events", self._on_event)
        self.message_id = ""
        self.stream = Stream()
        self.done = asyncio.Event()

    async def _on_event(self, payload: dict[str, Any]) -> None:
        at = time.perf_counter()
        if payload.get("message_id") != self.message_id:
            return
        data = payload["data"]
        kind = data.get("type")
        if kind == "chat:message:delta":
            self.stream.chunk(at, data["data"]["content"])
        elif kind == "chat:message:error":
            self.stream.fail(f"chat:message:error {data['data']}")
        elif kind == "chat:active" and data["data"] == {"active": False}:
            self.done.set()

    async def open(self, turns: int) -> None:
        await self.sio.connect(
            self.base,
            socketio_path="/ws/socket.io",
            auth={"token": self.token},
            transports=["websocket"],
            wait_timeout=30,
        )

    async def turn(self, index: int, stream: Stream) -> None:
        self.stream = stream
        self.done.clear()
        self.message_id = str(uuid.uuid4())
        body = {
            "stream": True,
            "model": MODEL,
            "params": {},
            "tool_ids": [],
            "features": {"web_search": False},
            "variables": {},
            "session_id": self.sio.get_sid(),
            "id": self.message_id,
            "message_ids": [{"model_id": MODEL, "message_id": self.message_id, "modelIdx": 0}],
            "parent_id": None,
            "user_message": {
                "id": str(uuid.uuid4()),
                "parentId": None,
                "childrenIds": [],
                "role": "user",
                "content": QUESTION,
                "timestamp": int(time.time()),
                "models": [MODEL],
            },
            "background_tasks": {},
        }
        headers = {"Authorization": f"Bearer {self.token}"}
        stream.began = time.perf_counter()
        async with self.http.post(
            f"{self.base}/api/chat/completions", json=body, headers=headers
        ) as resp:
            if resp.status != 200:
                stream.fail(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                return
            await resp.read()
        await self.done.wait()

    async def close(self) -> None:
        try:
            await self.sio.disconnect()
        finally:
            await self.own_http.close()


# -- one path at one level -----------------------------------------------------------
def make_client(
    flavour: str,
    path: str,
    index: int,
    http: aiohttp.ClientSession,
    servers: Servers,
    ids: Identities,
) -> Client:
    gateway = path == "gateway"
    base = servers.gateway if gateway else servers.relay
    who = ids if gateway else None
    if flavour == "openai-sse":
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
        }
        url = {
            "direct": f"{servers.upstream}/chat/completions",
            "relay": f"{servers.relay}/v1/chat/completions",
            "gateway": f"{servers.gateway}/v1/chat/completions",
        }[path]
        headers = {"Authorization": f"Bearer {ids.jwt(index)}"} if gateway else {}
        return SseClient(http, url, headers, lambda _: body, ragflow=False)
    if flavour == "ragflow-sse":
        if path == "direct":  # the upstream speaks OpenAI: its floor is the same
            return make_client("openai-sse", path, index, http, servers, ids)
        return RagflowSseClient(http, base, who, index)
    if flavour == "ragflow-ws":
        return RagflowWsClient(http, base, who, index)
    if flavour == "nadoo-ws":
        return NadooWsClient(http, base, who, index)
    if flavour == "socketio":
        return SioClient(http, base, who, index)
    raise ValueError(flavour)


@dataclass
class PathResult:
    streams: list[Stream]
    cpu_s: float | None
    errors: list[str]

    def report(self) -> dict[str, Any]:
        ttfts = [(s.times[0] - s.began) * 1000 for s in self.streams if s.times]
        chunks = sum(len(s.times) for s in self.streams)
        gaps = [b - a for s in self.streams for a, b in itertools.pairwise(s.times)]
        return {
            "ttft_ms": [round(t, 3) for t in ttfts],
            "cpu_us_per_chunk": (
                round(self.cpu_s / chunks * 1e6, 2) if self.cpu_s is not None and chunks else None
            ),
            "chunks": chunks,
            "max_gap_ms": round(max(gaps) * 1000, 3) if gaps else 0.0,
        }


async def run_path(
    flavour: str, path: str, level: int, plan_: Plan, servers: Servers, ids: Identities
) -> PathResult:
    pid = {"direct": None, "relay": servers.relay_pid, "gateway": servers.gateway_pid}[path]
    rounds = plan_.rounds(level)
    timeout_s = max(30.0, plan_.deltas * plan_.delay_s * 20)
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [make_client(flavour, path, i, http, servers, ids) for i in range(level)]
        try:
            # Setup is not measured; at most 50 at once, as a burst of 200 new users
            # (keys, assistants, sessions) is not what is measured either.
            gate = asyncio.Semaphore(50)

            async def open_one(client: Client) -> None:
                async with gate:
                    await client.open(rounds + 1)

            await asyncio.gather(*(open_one(c) for c in clients))

            async def one_turn(client: Client, index: int) -> Stream:
                stream = Stream()
                try:
                    await asyncio.wait_for(client.turn(index, stream), timeout_s)
                except TimeoutError:
                    stream.fail(f"no end after {timeout_s:.0f} s ({len(stream.times)} chunks)")
                except Exception as exc:  # a failed stream is reported, not fatal
                    stream.fail(f"{type(exc).__name__}: {exc}")
                if stream.error is None and stream.text != plan_.text:
                    stream.fail(f"text differs: {len(stream.times)} chunks, {stream.text[:60]!r}…")
                if stream.error is not None:
                    errors.append(stream.error)
                return stream

            async def one_round(index: int) -> list[Stream]:
                return await asyncio.gather(*(one_turn(c, index) for c in clients))

            await one_round(0)  # warm-up: connections, users, caches
            streams: list[Stream] = []
            cpu_before = cpu_seconds(pid) if pid else 0.0
            for index in range(1, rounds + 1):
                streams += await one_round(index)
            cpu = cpu_seconds(pid) - cpu_before if pid else None
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return PathResult(streams, cpu, errors)


def paths_of(flavour: str) -> list[str]:
    return ["direct", "relay", "gateway"] if flavour in SSE_FLAVOURS else ["relay", "gateway"]


def run(
    plan_: Plan,
    flavours: Sequence[str] = FLAVOURS,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    up_port, relay_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    pace = [str(plan_.deltas), str(plan_.delay_s)]
    result: dict[str, Any] = {
        "upstream": {"deltas": plan_.deltas, "delay_ms": plan_.delay_s * 1000},
        "levels": plan_.levels,
        "flavours": {},
    }
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), *pace],
            health=f"{upstream_url}/models",
        )
    ]
    try:
        relay = start(
            ["-m", "bench.servers", "flavour-relay", str(relay_port), upstream_url],
            health=f"http://127.0.0.1:{relay_port}/health",
        )
        procs.append(relay)
        gateway = start_gateway(gw_port, upstream_url)
        procs.append(gateway)
        servers = Servers(
            upstream=upstream_url,
            relay=f"http://127.0.0.1:{relay_port}",
            gateway=f"http://127.0.0.1:{gw_port}",
            relay_pid=relay.pid,
            gateway_pid=gateway.pid,
        )
        ids = Identities(servers.gateway)
        for flavour in flavours:
            rows: dict[str, Any] = {}
            result["flavours"][flavour] = rows
            for level in plan_.levels:
                rows[str(level)] = {}
                for path in paths_of(flavour):
                    progress(f"{flavour}, {level} stream{'s' * (level > 1)}, {path}")
                    try:
                        found = asyncio.run(run_path(flavour, path, level, plan_, servers, ids))
                    except Exception as exc:  # setup failed: report it, go on
                        found = PathResult([], None, [f"{type(exc).__name__}: {exc}"])
                    rows[str(level)][path] = found.report()
                    if found.errors:
                        print(
                            f"bench_flavours: {flavour} {level} {path}: {len(found.errors)} "
                            f"failed stream(s), first: {found.errors[0]}",
                            file=sys.stderr,
                        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
                proc.wait(10)
    return result


def measure(
    quick: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """{"upstream": {"deltas": int, "delay_ms": float},
        "levels": [1, N],
        "flavours": {flavour: {str(level): {path: {"ttft_ms": [float, ...],
                                                  "cpu_us_per_chunk": float | None,
                                                  "chunks": int, "max_gap_ms": float}}}}}

    flavour ∈ FLAVOURS, path ∈ {"direct" (SSE flavours only), "relay", "gateway"}.
    `progress` is called once per (flavour, level, path), before it starts."""
    return run(plan(quick), FLAVOURS, progress)


# -- the table -----------------------------------------------------------------------
def _ms(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q):.2f}" if values else "–"


def table(result: dict[str, Any], plan_: Plan) -> list[str]:
    lines = [
        "| flavour | streams | direct TTFT p50 / p99 ms | relay TTFT p50 / p99 ms "
        "| gateway TTFT p50 / p99 ms | added TTFT p50 ms (gw − relay) "
        "| CPU µs/chunk relay / gateway | CPU gw ÷ relay | chunks relay / gateway (expected) "
        "| max gap ms relay / gateway |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for flavour, levels in result["flavours"].items():
        for level, paths in levels.items():
            expected = int(level) * plan_.rounds(int(level)) * plan_.deltas
            cells = []
            for path in ("direct", "relay", "gateway"):
                row = paths.get(path)
                cells.append(
                    f"{_ms(row['ttft_ms'], 50)} / {_ms(row['ttft_ms'], 99)}" if row else "–"
                )
            relay, gw = paths["relay"], paths["gateway"]
            if relay["ttft_ms"] and gw["ttft_ms"]:
                added = percentile(gw["ttft_ms"], 50) - percentile(relay["ttft_ms"], 50)
                added_cell = f"**{added:+.2f}**"
            else:
                added_cell = "–"
            cpu_r, cpu_g = relay["cpu_us_per_chunk"], gw["cpu_us_per_chunk"]
            ratio = f"**×{cpu_g / cpu_r:.2f}**" if cpu_r and cpu_g else "–"

            def cpu(value: float | None) -> str:
                return f"{value:.1f}" if value is not None else "–"

            lines.append(
                f"| {flavour} | {level} | {cells[0]} | {cells[1]} | {cells[2]} | {added_cell} "
                f"| {cpu(cpu_r)} / {cpu(cpu_g)} | {ratio} "
                f"| {relay['chunks']} / {gw['chunks']} ({expected}) "
                f"| {relay['max_gap_ms']:.1f} / {gw['max_gap_ms']:.1f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="N = 20, fewer rounds, a shorter reply"
    )
    parser.add_argument("--streams", type=int, default=None, help="N (default 200, quick 20)")
    parser.add_argument(
        "--deltas",
        type=int,
        default=None,
        help="a reply's length in deltas (default 32, quick 16): what each reply's fixed "
        "costs (its turn written, its end) are shared over",
    )
    parser.add_argument(
        "--flavours",
        default=",".join(FLAVOURS),
        help="comma-separated subset of " + ", ".join(FLAVOURS),
    )
    args = parser.parse_args()
    flavours = [f.strip() for f in args.flavours.split(",") if f.strip()]
    unknown = set(flavours) - set(FLAVOURS)
    if unknown:
        parser.error(f"unknown flavour(s): {', '.join(sorted(unknown))}")
    plan_ = plan(args.quick, args.streams, args.deltas)
    began = time.monotonic()
    result = run(plan_, flavours, lambda msg: print(f"… {msg}", file=sys.stderr, flush=True))
    took = time.monotonic() - began
    print(f"# Flavours bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# {plan_.deltas} deltas {plan_.delay_s * 1000:.0f} ms apart; 1 stream: "
        f"{plan_.rounds_one} rounds; {plan_.streams} streams: {plan_.rounds_many} rounds "
        f"(each after a warm-up round); {took:.0f} s\n"
    )
    print("\n".join(table(result, plan_)))


if __name__ == "__main__":
    main()
