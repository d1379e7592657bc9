"""The same client, N users: the web app's new-chat turn on three servers.

    python -m bench.bench_webapp [--quick] [--users 50] [--peer openwebui] [--json]
                                 [--flow webapp|chats-new]

N users (50; 10 with --quick), each a python-socketio client on /ws/socket.io
(websocket transport, `auth={"token": …}`, then `user-join` as the web app
emits on connect), all send one turn at once, as the unmodified Open WebUI
0.12.4 web app sends a new chat's first message (its Chat.svelte
`sendMessageSocket`): one `POST /api/chat/completions` with no `chat_id`,
`parent_id: null`, the socket's id in `session_id`, the assistant message's id in
`id` and `message_ids`, the `user_message`, `model_item`, `features`,
`variables`, `chat_variables`, `params`, `tool_ids` and `background_tasks` (all
three off, as a user whose settings turn them off), and no `messages` (a saved
chat's conversation is the server's).  The server makes the chat and streams the
reply to the socket as `events`.  With `--flow chats-new` the turn is made as
older web apps (and the backend-controlled tutorial) make it: `POST
/api/v1/chats/new` with the chat object first, then the same body naming it in
`chat_id`.

The client reduces the events of its assistant message as the web app does:
`chat:message:delta` (the gateway, the trivial server) and `response:completion`
`response.output_text.delta` (Open WebUI 0.12.4) append, `chat:completion`
replaces with its `output` or `content` (or appends `choices[0].delta`), and
`chat:completion` with `done: true` ends the reply.

Targets, one after the other in one run, in front of the same paced upstream
(`bench.servers upstream`, 49 deltas 20 ms apart), with the same client code:

* `trivial`  — the least a server can do: the Socket.IO relay of
               `bench.servers.flavour_relay_app` (answers the POST at once, reads the
               upstream, emits `chat:message:delta` per delta and `chat:completion`
               to the socket), plus `/api/models` and `/api/v1/chats/new`; run as
               `python -m bench.bench_webapp --serve-trivial PORT UPSTREAM_URL`, on
               the gateway's event loop (uvloop's unless GATEWAY_EVENT_LOOP=asyncio).
               Its TTFT is the client's and the upstream's share;
* `gateway`  — `bench.common.start_gateway`; users are JWTs `{"id": "bench-<run>-<i>"}`
               signed with the bench secret;
* `openwebui` — Open WebUI 0.12.4 (`bench.peer_openwebui`), only with
               `--peer openwebui`; users signed up on it.

Each server is started when its turn comes and stopped once measured, so the
next one has the machine to itself (but for the idle upstream).  Per target:
one warm-up round (first chats, caches, connections), then the measured round:

* `complete`   — replies whose text equals the upstream's whole reply (the streamed
                 deltas exactly, the final content up to surrounding whitespace),
                 ended by `chat:completion` done within 60 s of the POST;
* `ttft_ms`    — per reply, from sending the completions POST to the first event
                 that gives the message content;
* `cpu_ms_per_reply` — user + system CPU of the server's processes (from /proc)
                 over the measured round and 0.5 s after it, ÷ users;
* `rss_mb`     — VmRSS of the server's processes after the measured round;
* `wire_bytes_per_reply` — TCP payload bytes the server sent and had acknowledged
                 on its port during the round (`ss -ti` bytes_acked, sampled every
                 0.5 s), ÷ users: socket frames and POST answers.

Derived: the gateway's share of TTFT (gateway − trivial, p50 and p99) and, with
the peer, Open WebUI's CPU per reply ÷ the gateway's.  CPU is counted in 10 ms
ticks: at 10 users a round is a few ticks, so --quick's CPU is indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import socketio
from aiohttp import web

from bench import peer_openwebui
from bench.common import (
    BENCH_SECRET,
    ROOT,
    cpu_seconds,
    free_port,
    machine,
    percentile,
    start,
    start_gateway,
    stop,
)

MODEL = "bench"  # the paced upstream's one model
QUESTION = "hi"
TARGETS = {
    "trivial": "trivial server (client share)",
    "gateway": "gateway",
    "openwebui": f"Open WebUI {peer_openwebui.VERSION}",
}
FLOWS = ("webapp", "chats-new")
SETTLE_S = 0.5


@dataclass(frozen=True)
class Plan:
    users: int
    deltas: int = 49
    delay_s: float = 0.02
    timeout_s: float = 60.0

    @property
    def text(self) -> str:
        """The whole reply of the paced upstream."""
        return "".join(f"tok{index} " for index in range(self.deltas))


def plan(quick: bool, users: int | None = None) -> Plan:
    return Plan(users=users or (10 if quick else 50))


# -- one user: a socket and its turns -------------------------------------------------
@dataclass
class Reply:
    """One assistant message as the client saw it."""

    began: float = 0.0
    first: float | None = None  # the first event that gave it content
    ended: float | None = None  # chat:completion done
    content: str = ""  # as the web app's message.content
    streamed: list[str] = field(default_factory=list)  # the appended pieces
    events: int = 0
    error: str | None = None

    def fail(self, error: str) -> None:
        self.error = self.error or error


def output_text(output: list[Any]) -> str:
    """The text of Open WebUI's `output` items (its web app's getOutputText)."""
    texts = []
    for item in output:
        if isinstance(item, dict) and item.get("type") == "message":
            parts = item.get("content") or []
            text = "".join(
                str(part.get("text") or "")
                for part in parts
                if isinstance(part, dict) and part.get("type") == "output_text"
            )
            if text.strip():
                texts.append(text)
    return "\n".join(texts)


def apply_event(reply: Reply, data: dict[str, Any], at: float) -> bool:
    """Reduce one `events` payload's `data` into `reply`, as the web app's
    chatEventHandler does for the text; True when it ends the reply."""
    kind = data.get("type")
    inner = data.get("data")
    inner = inner if isinstance(inner, dict) else {}
    reply.events += 1
    before = reply.content
    done = False

    def append(piece: Any) -> None:
        if isinstance(piece, str) and piece:
            reply.streamed.append(piece)
            reply.content += piece

    if kind in ("chat:message:delta", "message"):
        append(inner.get("content"))
    elif kind in ("chat:message", "replace"):
        reply.content = str(inner.get("content") or "")
    elif kind == "response:completion":
        if inner.get("type") == "response.output_text.delta":
            append(inner.get("delta"))
    elif kind == "chat:completion":
        if inner.get("error"):
            reply.fail(f"chat:completion error {inner['error']}")
        output, choices, content = inner.get("output"), inner.get("choices"), inner.get("content")
        if isinstance(output, list):
            reply.content = output_text(output)
        elif isinstance(choices, list) and choices and isinstance(choices[0], dict):
            append((choices[0].get("delta") or {}).get("content"))
        elif isinstance(content, str) and content:
            reply.content = content
        done = inner.get("done") is True
    elif kind == "chat:message:error":
        reply.fail(f"chat:message:error {inner}")
    elif kind == "chat:tasks:cancel":
        reply.fail("chat:tasks:cancel")
    if reply.first is None and reply.content and not before:
        reply.first = at
    if done:
        reply.ended = at
    return done


class WebAppUser:
    """One browser tab: its socket, and its turns over HTTP with its own connections."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.user_id = str(jwt.decode(token, options={"verify_signature": False})["id"])
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.sio.on("events", self._on_event)
        self.message_id = ""
        self.reply = Reply()
        self.done = asyncio.Event()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _on_event(self, payload: Any) -> None:
        at = time.perf_counter()
        if not isinstance(payload, dict) or payload.get("message_id") != self.message_id:
            return
        data = payload.get("data")
        if isinstance(data, dict) and apply_event(self.reply, data, at):
            self.done.set()

    async def open(self) -> None:
        await self.sio.connect(
            self.base,
            socketio_path="/ws/socket.io",
            auth={"token": self.token},
            transports=["websocket"],
            wait_timeout=60,
        )
        await self.sio.emit("user-join", {"auth": {"token": self.token}})

    async def models(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.base}/api/models", headers=self.headers) as resp:
            resp.raise_for_status()
            data = (await resp.json(content_type=None)).get("data") or []
        return [model for model in data if isinstance(model, dict)]

    def _messages(self, user_id: str, assistant_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        now = int(time.time())
        user = {
            "id": user_id,
            "parentId": None,
            "childrenIds": [assistant_id],
            "role": "user",
            "user": {"id": self.user_id, "name": self.user_id},
            "user_id": self.user_id,
            "content": QUESTION,
            "timestamp": now,
            "models": [MODEL],
        }
        assistant = {
            "parentId": user_id,
            "id": assistant_id,
            "childrenIds": [],
            "role": "assistant",
            "user_id": self.user_id,
            "content": "",
            "done": False,
            "model": MODEL,
            "modelName": MODEL,
            "modelIdx": 0,
            "timestamp": now,
        }
        return user, assistant

    async def _new_chat(self, user: dict[str, Any], assistant: dict[str, Any]) -> str:
        """Chat.svelte's initChatHandler: POST /api/v1/chats/new, the chat id."""
        chat = {
            "id": "",
            "title": "New Chat",
            "models": [MODEL],
            "params": {},
            "history": {
                "messages": {user["id"]: user, assistant["id"]: assistant},
                "currentId": assistant["id"],
            },
            "messages": [user, assistant],
            "tags": [],
            "timestamp": int(time.time() * 1000),
        }
        body = {"chat": chat, "variables": {}, "folder_id": None}
        async with self.http.post(
            f"{self.base}/api/v1/chats/new", json=body, headers=self.headers
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"POST /api/v1/chats/new: HTTP {resp.status} {text[:200]}")
        return str(json.loads(text)["id"])

    def body(
        self,
        user: dict[str, Any],
        assistant_id: str,
        model_item: dict[str, Any],
        chat_id: str | None,
    ) -> dict[str, Any]:
        """The body Open WebUI 0.12.4's web app sends (Chat.svelte sendMessageSocket)
        for a saved chat's first turn, settings and toggles at their defaults."""
        body: dict[str, Any] = {
            "stream": True,
            "model": MODEL,
            "params": {"model_controls": {}},
            "tool_ids": [],
            "tool_servers": [],
            "features": {
                "voice": False,
                "image_generation": False,
                "code_interpreter": False,
                "web_search": False,
            },
            "variables": {
                "{{USER_NAME}}": self.user_id,
                "{{USER_EMAIL}}": "Unknown",
                "{{USER_LOCATION}}": "Unknown",
                "{{CURRENT_DATETIME}}": time.strftime("%Y-%m-%d %H:%M:%S"),
                "{{CURRENT_DATE}}": time.strftime("%Y-%m-%d"),
                "{{CURRENT_TIME}}": time.strftime("%H:%M:%S"),
                "{{CURRENT_WEEKDAY}}": time.strftime("%A"),
                "{{CURRENT_TIMEZONE}}": time.strftime("%Z"),
                "{{USER_LANGUAGE}}": "en-US",
            },
            "model_item": model_item,
            "session_id": self.sio.get_sid(),
            "id": assistant_id,
            "message_ids": [{"model_id": MODEL, "message_id": assistant_id, "modelIdx": 0}],
            "parent_id": None,
            "user_message": user,
            "background_tasks": {
                "title_generation": False,
                "tags_generation": False,
                "follow_up_generation": False,
            },
        }
        if chat_id is None:
            body["chat_variables"] = {}  # the web app sends them while the chat has no id
        else:
            body["chat_id"] = chat_id
        return body

    async def turn(self, model_item: dict[str, Any], flow: str) -> Reply:
        """One new chat's first turn and its whole reply; never raises."""
        reply = self.reply = Reply()
        self.done.clear()
        assistant_id = self.message_id = str(uuid.uuid4())
        user, assistant = self._messages(str(uuid.uuid4()), assistant_id)
        try:
            chat_id = await self._new_chat(user, assistant) if flow == "chats-new" else None
            body = self.body(user, assistant_id, model_item, chat_id)
            reply.began = time.perf_counter()
            async with self.http.post(
                f"{self.base}/api/chat/completions", json=body, headers=self.headers
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    reply.fail(f"POST /api/chat/completions: HTTP {resp.status} {text[:300]}")
                    return reply
            await self.done.wait()
        except Exception as exc:  # a failed turn is reported, not fatal
            reply.fail(f"{type(exc).__name__}: {exc}")
        return reply

    async def close(self) -> None:
        try:
            await self.sio.disconnect()
        finally:
            await self.http.close()


# -- what the server's process costs ----------------------------------------------------
def rss_mb(pids: Sequence[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class WireMeter:
    """Bytes a server sent (and had acknowledged) on its port's TCP connections, from
    `ss -ti`, sampled while a round runs so that connections closed during it count."""

    SAMPLE_S = 0.5

    def __init__(self, port: int) -> None:
        self.port = port
        self.before: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.available = shutil.which("ss") is not None

    async def sample(self) -> dict[str, int]:
        proc = await asyncio.create_subprocess_exec(
            "ss",
            "-tinH",
            "state",
            "established",
            f"( sport = :{self.port} )",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        found: dict[str, int] = {}
        key = ""
        for line in out.decode(errors="replace").splitlines():
            if line and not line[0].isspace():
                key = " ".join(line.split()[-2:])  # local and peer addresses
                found.setdefault(key, 0)
            acked = re.search(r"\bbytes_acked:(\d+)", line)
            if key and acked:
                found[key] = int(acked.group(1))
        return found

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.SAMPLE_S)
            for key, value in (await self.sample()).items():
                self.seen[key] = max(value, self.seen.get(key, 0))

    async def start(self) -> None:
        if self.available:
            self.before = await self.sample()
            self.seen = dict(self.before)
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> int | None:
        if self.task is None:
            return None
        self.task.cancel()
        for key, value in (await self.sample()).items():
            self.seen[key] = max(value, self.seen.get(key, 0))
        return sum(value - self.before.get(key, 0) for key, value in self.seen.items())


# -- one target ------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: str  # a key of TARGETS
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    tokens: list[str]

    def cpu(self) -> dict[int, float]:
        """CPU seconds of each of the server's processes."""
        found = {}
        for pid in peer_openwebui.pids(self.proc):
            try:
                found[pid] = cpu_seconds(pid)
            except OSError:
                continue
        return found


def check(reply: Reply, plan_: Plan) -> None:
    """Mark `reply` failed unless it arrived whole and ended within the time."""
    if reply.error is not None:
        return
    if reply.ended is None:
        reply.fail(f"no chat:completion done in {plan_.timeout_s:.0f} s ({reply.events} events)")
    elif reply.ended - reply.began > plan_.timeout_s:
        reply.fail(f"ended after {reply.ended - reply.began:.1f} s")
    elif reply.streamed and "".join(reply.streamed) != plan_.text:
        reply.fail(f"streamed text differs: {''.join(reply.streamed)[:80]!r}…")
    elif reply.content.strip() != plan_.text.strip():
        reply.fail(f"final content differs: {reply.content[:80]!r}…")


async def run_target(target: Target, plan_: Plan, flow: str) -> dict[str, Any]:
    users = [WebAppUser(target.url, token) for token in target.tokens]
    try:
        gate = asyncio.Semaphore(25)

        async def open_one(user: WebAppUser) -> None:
            async with gate:
                await user.open()

        await asyncio.gather(*(open_one(user) for user in users))
        offered = {model["id"]: model for model in await users[0].models() if "id" in model}
        if MODEL not in offered:
            raise RuntimeError(f"{target.url}/api/models has no {MODEL!r}: {sorted(offered)}")
        model_item = offered[MODEL]

        async def one_turn(user: WebAppUser) -> Reply:
            try:
                reply = await asyncio.wait_for(user.turn(model_item, flow), plan_.timeout_s)
            except TimeoutError:
                reply = user.reply
            check(reply, plan_)
            return reply

        async def one_round() -> list[Reply]:
            return list(await asyncio.gather(*(one_turn(user) for user in users)))

        warm = await one_round()  # first chats, caches, connections
        wire = WireMeter(target.port)
        await wire.start()
        cpu_before = target.cpu()
        began = time.monotonic()
        replies = await one_round()
        seconds = time.monotonic() - began
        await asyncio.sleep(SETTLE_S)  # what a server does after the last event
        # A process started meanwhile counts whole.
        cpu = sum(after - cpu_before.get(pid, 0.0) for pid, after in target.cpu().items())
        wire_bytes = await wire.stop()
        rss = rss_mb(peer_openwebui.pids(target.proc))
    finally:
        await asyncio.gather(*(user.close() for user in users), return_exceptions=True)
    ttfts = [(r.first - r.began) * 1000 for r in replies if r.first is not None]
    errors = [r.error for r in replies if r.error is not None]
    return {
        "label": TARGETS[target.name],
        "users": len(users),
        "complete": len(replies) - len(errors),
        "warm_up_complete": sum(r.error is None for r in warm),
        "ttft_ms": [round(t, 2) for t in ttfts],
        "ttft_p50_ms": round(percentile(ttfts, 50), 2) if ttfts else None,
        "ttft_p99_ms": round(percentile(ttfts, 99), 2) if ttfts else None,
        "cpu_ms_per_reply": round(cpu / len(users) * 1000, 2),
        "rss_mb": round(rss, 1),
        "wire_bytes_per_reply": round(wire_bytes / len(users)) if wire_bytes is not None else None,
        "events_per_reply": round(sum(r.events for r in replies) / len(replies), 1),
        "round_s": round(seconds, 2),
        "errors": errors[:5],
        "errors_total": len(errors),
    }


# -- the run ---------------------------------------------------------------------------
def failed_row(name: str, users: int, error: str) -> dict[str, Any]:
    return {
        "label": TARGETS[name],
        "users": users,
        "complete": 0,
        "ttft_ms": [],
        "ttft_p50_ms": None,
        "ttft_p99_ms": None,
        "cpu_ms_per_reply": None,
        "rss_mb": None,
        "wire_bytes_per_reply": None,
        "events_per_reply": None,
        "errors": [error],
        "errors_total": users,
        "failed": error,
    }


def gateway_tokens(n: int, secret: str = BENCH_SECRET) -> list[str]:
    """JWTs of n users new to the gateway (a run never finds an earlier run's chats)."""
    run = uuid.uuid4().hex[:8]
    return [jwt.encode({"id": f"bench-{run}-{i}"}, secret, algorithm="HS256") for i in range(n)]


def measure(
    quick: bool = False,
    progress: Callable[[str], None] = lambda _: None,
    peer: str | None = None,
    users: int | None = None,
    flow: str = "webapp",
) -> dict[str, Any]:
    """{"users": int, "flow": str, "upstream": {"deltas": int, "delay_ms": float},
        "targets": {name: {"label", "users", "complete", "ttft_ms": [float, ...],
                           "ttft_p50_ms", "ttft_p99_ms", "cpu_ms_per_reply", "rss_mb",
                           "wire_bytes_per_reply", "events_per_reply", "round_s",
                           "errors", "errors_total", "seconds"}},
        "gateway_share_ms": {"p50": float, "p99": float} | None,
        "cpu_openwebui_over_gateway": float | None}

    name ∈ {"trivial", "gateway", "openwebui" (with peer="openwebui")}; a target that
    failed has `complete` 0, None figures and its error in `failed`.
    `progress` is called before each target (and before the peer's start and sign-ups)."""
    if peer not in (None, "openwebui"):
        raise ValueError(f"unknown peer {peer!r}; known: openwebui")
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; known: {', '.join(FLOWS)}")
    plan_ = plan(quick, users)
    venv = peer_openwebui.ensure(progress=progress) if peer == "openwebui" else None
    result: dict[str, Any] = {
        "users": plan_.users,
        "flow": flow,
        "upstream": {"deltas": plan_.deltas, "delay_ms": plan_.delay_s * 1000},
        "targets": {},
    }
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    pace = [str(plan_.deltas), str(plan_.delay_s)]
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), *pace],
            health=f"{upstream_url}/models",
        )
    ]

    def run(name: str, proc: subprocess.Popen[bytes], port: int, tokens: list[str]) -> None:
        began = time.monotonic()
        url = f"http://127.0.0.1:{port}"
        target = Target(name, url, port, proc, tokens)
        found = asyncio.run(run_target(target, plan_, flow))
        found["seconds"] = round(time.monotonic() - began, 1)
        result["targets"][name] = found
        if found["errors"]:
            print(
                f"bench_webapp: {name}: {found['errors_total']} incomplete repl"
                f"{'ies' if found['errors_total'] > 1 else 'y'}, first: {found['errors'][0]}",
                file=sys.stderr,
            )

    def trivial_target() -> None:
        port = free_port()
        trivial = start(
            ["-m", "bench.bench_webapp", "--serve-trivial", str(port), upstream_url],
            health=f"http://127.0.0.1:{port}/health",
        )
        procs.append(trivial)
        run("trivial", trivial, port, gateway_tokens(plan_.users))
        stop(trivial)

    def gateway_target() -> None:
        port = free_port()
        gateway = start_gateway(port, upstream_url)
        procs.append(gateway)
        run("gateway", gateway, port, gateway_tokens(plan_.users))
        stop(gateway)

    def openwebui_target() -> None:
        assert venv is not None
        progress(f"{TARGETS['openwebui']}: starting (a minute or so)")
        port = free_port()
        data_dir = ROOT / "bench" / "out" / "webapp-openwebui"
        shutil.rmtree(data_dir, ignore_errors=True)  # this bench's own, fresh each run
        began = time.monotonic()
        openwebui = peer_openwebui.start(port, upstream_url, data_dir, venv)
        procs.append(openwebui)
        started_s = time.monotonic() - began
        progress(f"{TARGETS['openwebui']}: signing up {plan_.users} users")
        tokens = peer_openwebui.sign_up(f"http://127.0.0.1:{port}", plan_.users)
        run("openwebui", openwebui, port, tokens)
        result["targets"]["openwebui"]["start_s"] = round(started_s, 1)
        stop(openwebui)

    steps = [("trivial", trivial_target), ("gateway", gateway_target)]
    if venv is not None:
        steps.append(("openwebui", openwebui_target))
    try:
        for name, step in steps:
            progress(TARGETS[name])
            try:
                step()
            except Exception as exc:  # a target that failed is reported, the others run
                error = f"{type(exc).__name__}: {exc}"
                result["targets"][name] = failed_row(name, plan_.users, error)
                print(f"bench_webapp: {name} failed: {error}", file=sys.stderr)
    finally:
        for proc in procs:
            stop(proc)

    targets = result["targets"]
    result["gateway_share_ms"] = None
    trivial_row, gateway_row = targets.get("trivial"), targets.get("gateway")
    if trivial_row and gateway_row and trivial_row["ttft_ms"] and gateway_row["ttft_ms"]:
        result["gateway_share_ms"] = {
            q: round(gateway_row[f"ttft_{q}_ms"] - trivial_row[f"ttft_{q}_ms"], 2)
            for q in ("p50", "p99")
        }
    result["cpu_openwebui_over_gateway"] = None
    peer_cpu = targets["openwebui"]["cpu_ms_per_reply"] if "openwebui" in targets else None
    if peer_cpu is not None and gateway_row and gateway_row["cpu_ms_per_reply"]:
        result["cpu_openwebui_over_gateway"] = round(peer_cpu / gateway_row["cpu_ms_per_reply"], 2)
    return result


# -- the trivial server ----------------------------------------------------------------
def trivial_app(upstream: str) -> web.Application:
    """`bench.servers.flavour_relay_app` (its Socket.IO relay answers the web app's
    turn) and the two routes more the web app's client asks for."""
    from bench.servers import flavour_relay_app

    async def models(request: web.Request) -> web.Response:
        model = {"id": MODEL, "object": "model", "name": MODEL, "owned_by": "bench"}
        return web.json_response({"data": [model]})

    async def new_chat(request: web.Request) -> web.Response:
        body = await request.json()
        chat_id = str(uuid.uuid4())
        return web.json_response({"id": chat_id, "chat": {**body.get("chat", {}), "id": chat_id}})

    app = flavour_relay_app(upstream)
    app.router.add_get("/api/models", models)
    app.router.add_post("/api/v1/chats/new", new_chat)
    return app


def serve_trivial(port: int, upstream: str) -> None:
    from bench.servers import serve

    serve(trivial_app(upstream), port)


# -- the table -------------------------------------------------------------------------
def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> list[str]:
    targets = result["targets"]
    trivial = targets.get("trivial")
    gateway = targets.get("gateway")
    lines = [
        "| server | users | replies complete in 60 s | TTFT p50 / p99 ms "
        "| share of TTFT p50 / p99 ms (− trivial) | CPU ms/reply | CPU ÷ gateway "
        "| RSS MB after | bytes on the wire/reply | events/reply |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in targets.items():
        share = "–"
        if trivial and name != "trivial" and row["ttft_p50_ms"] is not None and trivial["ttft_ms"]:
            share = (
                f"{row['ttft_p50_ms'] - trivial['ttft_p50_ms']:+.1f} / "
                f"{row['ttft_p99_ms'] - trivial['ttft_p99_ms']:+.1f}"
            )
        ratio = "–"
        if gateway and gateway["cpu_ms_per_reply"] and row["cpu_ms_per_reply"] is not None:
            ratio = f"×{row['cpu_ms_per_reply'] / gateway['cpu_ms_per_reply']:.2f}"
        wire = row["wire_bytes_per_reply"]
        lines.append(
            f"| {row['label']} | {row['users']} | {row['complete']} / {row['users']} "
            f"| {_num(row['ttft_p50_ms'])} / {_num(row['ttft_p99_ms'])} | {share} "
            f"| {_num(row['cpu_ms_per_reply'], 2)} | {ratio} | {_num(row['rss_mb'])} "
            f"| {'–' if wire is None else f'{wire:,}'} | {_num(row['events_per_reply'])} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=None, help="N (default 50, quick 10)")
    parser.add_argument("--quick", action="store_true", help="10 users")
    parser.add_argument("--peer", choices=["openwebui"], default=None, help="also Open WebUI")
    parser.add_argument(
        "--flow", choices=FLOWS, default="webapp", help="how a new chat is made (see above)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--serve-trivial",
        nargs=2,
        metavar=("PORT", "UPSTREAM_URL"),
        help="run the trivial server (the bench starts it itself)",
    )
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(int(args.serve_trivial[0]), args.serve_trivial[1])
        return
    began = time.monotonic()
    result = measure(
        quick=args.quick,
        progress=lambda msg: print(f"… {msg}", file=sys.stderr, flush=True),
        peer=args.peer,
        users=args.users,
        flow=args.flow,
    )
    took = time.monotonic() - began
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"# Web app bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# {result['users']} users at once, one new chat each ({result['flow']} flow); "
        f"{result['upstream']['deltas']} deltas {result['upstream']['delay_ms']:.0f} ms apart; "
        f"one warm-up round, then the measured one; {took:.0f} s\n"
    )
    print("\n".join(table(result)))
    if "openwebui" in result["targets"]:
        print(f"\nOpen WebUI started in {result['targets']['openwebui'].get('start_s')} s.")


if __name__ == "__main__":
    main()
