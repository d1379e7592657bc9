"""Idle memory per connection: one process holding up to 10,000 idle, authenticated
sockets, its RSS read at each step.

    python -m bench.bench_idle [--quick] [--max 10000] [--step 1000]
    python -m bench.bench_idle serve-baseline PORT      (the baseline server, run by the bench)

Target (the performance issue): at most 16 KB per idle raw WebSocket, 32 KB per
idle Socket.IO socket, 10,000 of them in one process.

Three servers, each a fresh process of its own, one after the other:

* `baseline`: a bare aiohttp WebSocket server (`serve-baseline` below): the
  upgrade, aiohttp's own 25 s heartbeat (a timer per socket, about 0.6 KB
  under uvloop, that the gateway does without: it pings every socket from one
  timer, `websocket_pings.py`), one `connected` text frame, then a read loop.
  What a plain aiohttp server holds a socket with;
* `websocket`: the gateway's Nadoo chat socket, `/ws/chat/<session>?token=<jwt>`,
  each connection its own user and session, held past its `connected` frame;
* `socketio`: the gateway's Socket.IO over websocket, `/ws/socket.io/?EIO=4&
  transport=websocket`, the Engine.IO open packet, then a Socket.IO CONNECT
  `40{"token": <jwt>}` and its ack; each its own user.

The gateway runs with its own data dir (removed afterwards), logs at WARNING
into `bench/out/idle-<transport>.log`, the per-address cap off
(`GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=`, loopback is a trusted proxy anyway) and
`GATEWAY_MAX_CONNECTIONS` at the largest step + 1,000.  The open-files limit is
raised to its hard limit here and in the children.

The load generator is this process: one asyncio loop, a `websockets` client per
connection (no client pings, no compression) and a task per connection that
reads what the server sends, answers Engine.IO pings ("2" → "3") and notes when
and why a socket closes.  Its memory is not measured: only the server's RSS
(`/proc/<pid>/status` VmRSS).  Before step 0, 20 connections are opened and
closed, so one-time costs (lazy imports, the first user, caches) are not billed
to the connections.  At each step the sockets are opened (64 at once), the
server's own count of connections is awaited (the gateway's `/ws/stats`, where a
socket is only once authenticated; the baseline's `/count`), then RSS is
sampled every 0.5 s until two samples agree within 256 KB (at most 6 s).

Per transport, KB per connection (`kb_per_connection`, the headline) is what
one more connection costs once some are held: (RSS at N − RSS at the first
step) / (N − the first step's count).  From zero instead, the first step would
be billed whatever start-up left behind: memory it freed, which the first
sockets reuse (a process whose modules were compiled from source frees more
than one that loaded `.pyc` files: the same code measured 3 KB a connection
apart an hour later, RSS at 0 14 MB apart), and one-time growth (tables,
timers) the first sockets pay for.  Also given: (RSS at N − RSS at 0) / N
(`kb_per_connection_from_zero`) and the slope of a least-squares line through
every step (`kb_per_connection_fit`); with a single step, the headline is the
one from zero.  `connections` are the sockets still open at each
step (opened less those the server dropped); `failed` counts opens that failed
and sockets dropped during the run.  `--hold S` keeps the last step open S
seconds more (past the gateway's 25 s pings and 75 s keep-alive timeout) and
counts what is dropped meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import websockets

from bench.common import BENCH_SECRET, ROOT, free_port, machine, stop

TRANSPORTS = ("baseline", "websocket", "socketio")
TARGET_KB = {"websocket": 16.0, "socketio": 32.0}
OPEN_AT_ONCE = 64
WARMUP = 20
HEARTBEAT_S = 25.0  # the baseline's aiohttp heartbeat: the gateway's PING_INTERVAL_S
SETTLE_EVERY_S = 0.5
SETTLE_KB = 256
SETTLE_MAX_S = 6.0
OUT = ROOT / "bench" / "out"


# -- processes -----------------------------------------------------------------------


def raise_open_files() -> int:
    """The soft open-files limit raised to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def spawn(args: list[str], env: dict[str, str], health: str, log: Path) -> subprocess.Popen[bytes]:
    """As `bench.common.start`, but stderr kept in `log` (a refusal or a drop must be
    seen).  The child inherits this process's raised open-files limit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(health, timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{args} did not come up at {health}")


def token(user: str) -> str:
    return jwt.encode({"id": user}, BENCH_SECRET, algorithm="HS256")


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class Server:
    """One process under test: its pid, its URLs, its own count of held sockets."""

    def __init__(self, name: str, max_connections: int) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = OUT / f"idle-{name}.log"
        self.data_dir: str | None = None
        if name == "baseline":
            args = ["-m", "bench.bench_idle", "serve-baseline", str(self.port)]
            self.proc = spawn(args, {}, f"{self.base}/health", self.log)
            return
        OUT.mkdir(parents=True, exist_ok=True)
        self.data_dir = tempfile.mkdtemp(prefix=f"idle-{name}-", dir=OUT)
        self.settings = {
            "WEBUI_SECRET_KEY": BENCH_SECRET,
            "DATA_DIR": self.data_dir,
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_MAX_CONNECTIONS": str(max_connections),
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
        }
        args = ["-m", "gateway", "serve", "--port", str(self.port)]
        try:
            self.proc = spawn(args, self.settings, f"{self.base}/health", self.log)
        except BaseException:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    def url(self, index: int) -> str:
        ws = f"ws://127.0.0.1:{self.port}"
        if self.name == "socketio":
            return f"{ws}/ws/socket.io/?EIO=4&transport=websocket"
        user = f"idle-{self.name}-{index}"
        return f"{ws}/ws/chat/s{index}?token={token(user)}"

    def held(self) -> int:
        """How many sockets the server says it holds (the gateway: authenticated ones)."""
        if self.name == "baseline":
            return int(get_json(f"{self.base}/count")["total_connections"])
        headers = {"Authorization": f"Bearer {token('idle-stats')}"}
        return int(get_json(f"{self.base}/ws/stats", headers)["total_connections"])

    def warnings(self) -> list[str]:
        try:
            return [line for line in self.log.read_text().splitlines() if line.strip()]
        except OSError:
            return []

    def close(self) -> None:
        try:
            stop(self.proc)
        finally:
            if self.data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


# -- the load generator --------------------------------------------------------------


class Fleet:
    """Idle client sockets to one server, each with a task that keeps it alive."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sockets: list[websockets.ClientConnection] = []
        self.keepers: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.open_failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.closing = False
        self.next_index = 0

    @property
    def alive(self) -> int:
        return self.opened - sum(self.drops.values())

    async def _open(self, index: int) -> websockets.ClientConnection:
        ws = await websockets.connect(
            self.server.url(index),
            ping_interval=None,
            compression=None,
            max_queue=4,
            open_timeout=30,
            close_timeout=2,
        )
        try:
            first = str(await asyncio.wait_for(ws.recv(), 30))
            if self.server.name == "socketio":
                if not first.startswith("0"):
                    raise RuntimeError(f"Engine.IO open expected, got {first[:60]!r}")
                auth = {"token": token(f"idle-socketio-{index}")}
                await ws.send("40" + json.dumps(auth))
                ack = str(await asyncio.wait_for(ws.recv(), 30))
                if not ack.startswith("40"):
                    raise RuntimeError(f"Socket.IO CONNECT ack expected, got {ack[:60]!r}")
            elif json.loads(first).get("type") != "connected":
                raise RuntimeError(f"`connected` expected, got {first[:60]!r}")
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _keep(self, ws: websockets.ClientConnection) -> None:
        engineio = self.server.name == "socketio"
        try:
            async for message in ws:
                if engineio and message == "2":
                    await ws.send("3")
        except websockets.ConnectionClosed:
            pass
        if not self.closing:
            self.drops[f"code {ws.close_code} {ws.close_reason!r}"] += 1

    async def grow(self, count: int) -> None:
        """`count` more sockets, OPEN_AT_ONCE at a time."""
        indexes = iter(range(self.next_index, self.next_index + count))
        self.next_index += count

        async def worker() -> None:
            for index in indexes:
                try:
                    ws = await self._open(index)
                except Exception as exc:  # counted and reported
                    self.open_failures[f"{type(exc).__name__}: {exc}"[:160]] += 1
                    continue
                self.sockets.append(ws)
                self.opened += 1
                task = asyncio.get_running_loop().create_task(self._keep(ws))
                self.keepers.add(task)
                task.add_done_callback(self.keepers.discard)

        await asyncio.gather(*(worker() for _ in range(OPEN_AT_ONCE)))

    async def close(self) -> None:
        self.closing = True
        sockets, self.sockets = self.sockets, []
        for start in range(0, len(sockets), 500):
            batch = sockets[start : start + 500]
            await asyncio.gather(*(ws.close() for ws in batch), return_exceptions=True)
        for task in list(self.keepers):
            task.cancel()
        await asyncio.gather(*self.keepers, return_exceptions=True)


async def settled_rss(pid: int) -> int:
    """RSS once two samples SETTLE_EVERY_S apart agree within SETTLE_KB."""
    await asyncio.sleep(SETTLE_EVERY_S)
    last = rss_kb(pid)
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_EVERY_S)
        now = rss_kb(pid)
        if abs(now - last) <= SETTLE_KB:
            return now
        last = now
    return last


async def server_sees(server: Server, expected: int, wait_s: float = 10.0) -> int:
    """The server's count, waited for until it is `expected` (or `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while True:
        held = await asyncio.to_thread(server.held)
        if held == expected or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.2)


def slope(xs: list[int], ys: list[float]) -> float:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return float("nan")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def marginal(connections: list[int], rss: list[int]) -> float:
    """KB per connection past the first step (from zero when there is no other)."""
    first = 1 if len(connections) > 2 and connections[-1] > connections[1] else 0
    held = connections[-1] - connections[first]
    return (rss[-1] - rss[first]) / held if held else float("nan")


async def measure_one(
    name: str, steps: list[int], progress: Callable[[str], None], hold_s: float = 0.0
) -> dict[str, Any]:
    server = Server(name, max(steps) + 1000)
    fleet: Fleet | None = None
    try:
        warm = Fleet(server)
        await warm.grow(WARMUP)
        await warm.close()
        await server_sees(server, 0)
        fleet = Fleet(server)
        connections: list[int] = []
        rss: list[int] = []
        seen: list[int] = []
        began = time.monotonic()
        for step in steps:
            if step > fleet.next_index:
                await fleet.grow(step - fleet.next_index)
            held = await server_sees(server, fleet.alive)
            kb = await settled_rss(server.proc.pid)
            connections.append(fleet.alive)
            seen.append(held)
            rss.append(kb)
            progress(
                f"{name}: {fleet.alive}/{step} open ({held} seen by the server), "
                f"RSS {kb / 1024:.1f} MB, {time.monotonic() - began:.0f} s"
            )
        # Still held once the last step settled (drops show up here).
        await asyncio.sleep(1.0)
        if hold_s > 0:
            await asyncio.sleep(hold_s)
            held = await server_sees(server, fleet.alive)
            kb = rss_kb(server.proc.pid)
            progress(
                f"{name}: after {hold_s:.0f} s more, {fleet.alive}/{steps[-1]} open "
                f"({held} seen by the server), RSS {kb / 1024:.1f} MB"
            )
        top = connections[-1]
        from_zero = (rss[-1] - rss[0]) / top if top else float("nan")
        failed = sum(fleet.open_failures.values()) + sum(fleet.drops.values())
        for why, count in (fleet.open_failures + fleet.drops).most_common(5):
            progress(f"{name}: {count} × {why}")
        if seen[-1] != connections[-1]:
            progress(f"{name}: the server counts {seen[-1]}, the client holds {connections[-1]}")
        for line in server.warnings()[-10:]:
            progress(f"{name} log: {line[:300]}")
        return {
            "connections": connections,
            "rss_mb": [round(kb / 1024, 2) for kb in rss],
            "kb_per_connection": round(marginal(connections, rss), 2),
            "kb_per_connection_from_zero": round(from_zero, 2),
            "kb_per_connection_fit": round(slope(connections, [float(k) for k in rss]), 2),
            "opened": fleet.opened,
            "failed": failed,
        }
    finally:
        try:
            if fleet is not None:
                await fleet.close()
        finally:
            server.close()


def plan(maximum: int, step: int) -> list[int]:
    steps = list(range(0, maximum + 1, max(1, step)))
    if steps[-1] != maximum:
        steps.append(maximum)
    return steps


async def run(
    steps: list[int], progress: Callable[[str], None], hold_s: float = 0.0
) -> dict[str, Any]:
    limit = raise_open_files()
    needed = max(steps) + 256
    if limit < needed:
        raise RuntimeError(
            f"the open-files limit is {limit}, {needed} are needed for {max(steps)} sockets: "
            "raise `ulimit -n` (the hard limit)"
        )
    transports = {}
    for name in TRANSPORTS:
        transports[name] = await measure_one(name, steps, progress, hold_s)
    return {"steps": steps, "transports": transports}


def measure(
    quick: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """{"steps": [0, 1000, ...],
    "transports": {name: {"connections": [int, ...], "rss_mb": [float, ...],
    "kb_per_connection": float, "kb_per_connection_from_zero": float,
    "kb_per_connection_fit": float, "opened": int, "failed": int}}}"""
    steps = plan(1000, 500) if quick else plan(10_000, 1000)
    return measure_steps(steps, progress)


def measure_steps(
    steps: list[int], progress: Callable[[str], None], hold_s: float = 0.0
) -> dict[str, Any]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run(steps, progress, hold_s))
    # Called from inside an event loop: the load gets a loop of its own.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(run(steps, progress, hold_s))
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _kb_columns(row: dict[str, Any]) -> tuple[str, str]:
    """KB per connection past the first step and from zero; a report from before
    2026-12-06 has only the one from zero (as `kb_per_connection`)."""
    if "kb_per_connection_from_zero" not in row:
        return "–", f"{row['kb_per_connection']:.1f}"
    return f"{row['kb_per_connection']:.1f}", f"{row['kb_per_connection_from_zero']:.1f}"


def table(result: dict[str, Any]) -> str:
    transports = result["transports"]
    base = transports.get("baseline", {}).get("kb_per_connection")
    lines = [
        "| transport | connections | RSS MB at 0 → N | KB/connection past the first step "
        "| from 0 | fit | ÷ baseline | target | opened / failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in transports.items():
        ratio = f"×{r['kb_per_connection'] / base:.2f}" if base else "–"
        target = f"≤ {TARGET_KB[name]:.0f} KB" if name in TARGET_KB else "–"
        lines.append(
            f"| {name} | {r['connections'][-1]:,} | {r['rss_mb'][0]:.1f} → {r['rss_mb'][-1]:.1f} "
            f"| {' | '.join(_kb_columns(r))} "
            f"| {r['kb_per_connection_fit']:.1f} | {ratio} "
            f"| {target} | {r['opened']:,} / {r['failed']:,} |"
        )
    lines += ["", "RSS MB by step:", ""]
    lines.append("| connections | " + " | ".join(transports) + " |")
    lines.append("|---|" + "---|" * len(transports))
    for i, step in enumerate(result["steps"]):
        cells = " | ".join(f"{r['rss_mb'][i]:.1f}" for r in transports.values())
        lines.append(f"| {step:,} | {cells} |")
    return "\n".join(lines)


# -- the baseline server -------------------------------------------------------------


def serve_baseline(port: int) -> None:
    from aiohttp import web

    raise_open_files()
    held: set[web.WebSocketResponse] = set()

    async def chat(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        held.add(ws)
        try:
            await ws.send_str('{"type": "connected"}')
            async for _ in ws:
                pass
        finally:
            held.discard(ws)
        return ws

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"total_connections": len(held)})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws/chat/{session}", chat)
    app.router.add_get("/count", count)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-baseline":
        serve_baseline(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 1,000 in 2 steps")
    parser.add_argument("--max", type=int, default=None, help="the largest step (10,000)")
    parser.add_argument("--step", type=int, default=None, help="connections per step (1,000)")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds to keep the last step open before closing (drops are counted)",
    )
    args = parser.parse_args()
    maximum = args.max if args.max is not None else (1000 if args.quick else 10_000)
    step = args.step if args.step is not None else (maximum // 2 if args.quick else 1000)
    began = time.monotonic()
    result = measure_steps(plan(maximum, step), lambda msg: print(msg, flush=True), args.hold)
    elapsed = time.monotonic() - began
    print(f"\n# Idle connections — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"one server process each, steps of {step:,} up to {maximum:,} idle authenticated "
        f"sockets; measured in {elapsed:.0f} s\n"
    )
    print(table(result))


if __name__ == "__main__":
    main()
