"""Bytes on the wire per reply, as a function of the reply's length, for every flavour.

    python -m bench.bench_wire [--quick]

Per reply length (50, 500 and 2,000 deltas; 20, 100 and 400 quick) one paced
upstream (`bench.servers upstream`, the deltas 1 ms apart), one bare relay of
every flavour (`bench.servers flavour-relay`) and one gateway
(`bench.common.start_gateway`, its own data dir) in front of it are started,
then stopped before the next length.  The clients are `bench.bench_flavours`'
(one stream, one user, the same request to relay and gateway), each pointed
at a counting TCP forwarder in the bench process: a loopback port that
forwards to the relay's or the gateway's and counts the bytes each way.  Those
are the TCP payload: HTTP request and response headers, chunked framing, SSE
lines, WebSocket and Engine.IO / Socket.IO framing, pings; not the IP and TCP
headers (nor the handshake, which has none).  WebSocket compression is off on
both sides (the gateway's default; the relay never compresses).

Rows (a flavour, and for RAGFlow the `answer_mode` every question asks, to
relay and gateway alike):

* `openai-sse`             — POST /v1/chat/completions, stream: true;
* `ragflow-sse cumulative` — RAGFlow SSE, each chunk's `answer` the whole text
                             so far (RAGFlow ≤ 0.23, the gateway's default):
                             **quadratic in the reply's length by the protocol
                             itself**, on the relay as on the gateway;
* `ragflow-sse delta`      — the same, `answer` a delta (RAGFlow ≥ 0.24);
* `ragflow-ws delta`       — RAGFlow's WebSocket, delta answers (its default);
* `ragflow-ws cumulative`  — the same asking cumulative answers (quadratic too);
* `nadoo-ws`               — Nadoo's socket, `text-delta` frames and a
                             `response_end` that repeats the whole text;
* `socketio`               — the web app's turn: POST /api/chat/completions,
                             then `events` over a Socket.IO websocket.

Counted per reply (a turn): every byte both ways from just before the
question is sent (the POST, or the socket's frame) to the reply's end as the
client sees it, and after it until the forwarder has been quiet for 50 ms (so
whatever trails the end marker, such as a chunked body's last chunk, is the
reply's).  Connection setup is **excluded** from the turn and reported apart
(`setup`): the bytes while the client connects — the WebSocket upgrade, Nadoo's
`connected`, Engine.IO's open and Socket.IO's connect; nothing for SSE, whose
keep-alive connection carries no bytes until the first request.  What the
gateway's clients do before (a RAGFlow key, an assistant, its sessions) goes
to the gateway directly, not through the forwarder, and is not counted.

Per (row, path, length), one warm-up reply, then REPLIES replies (3; 1 quick):

* `down` / `up`  — bytes server → client and client → server, per reply;
  medians are reported, and every sample is in the result;
* `B/delta`      — the median reply's bytes (both ways) ÷ its deltas
  (`per_token` in the result: a delta is a token of the upstream's);
* `marginal`     — bytes per added delta between two lengths:
  (total(L₂) − total(L₁)) ÷ (L₂ − L₁);
* `linearity`    — marginal between the two longest lengths ÷ marginal between
  the two shortest: ≈ 1 when a reply's bytes are linear in its length (a fixed
  cost plus a constant per delta), ≫ 1 when they grow faster (cumulative
  RAGFlow tends to (L₂ + L₃) ÷ (L₁ + L₂) as the text outweighs the frames:
  4.5 at the default lengths, 4.2 quick).  The upstream's deltas are
  `tok{i} `, a character longer at each power of ten (and Nadoo's
  `response_end` and Socket.IO's `chat:completion` repeat the whole text
  once): a linear flavour reads 1.00–1.03, not exactly 1;
* `gw ÷ relay`   — the gateway's bytes per reply ÷ the relay's, at the longest
  length.  For OpenAI SSE the relay passes the fake upstream's chunks as they
  are (`"id": "x"`, `"created": 0`), while the gateway writes its own, with
  a `chatcmpl-` id of 41 characters and the time, as a real server does:
  some 34 bytes a delta of the difference are that.

A reply whose text differs from the upstream's is reported on stderr, and
counted in `failed`; the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.bench_flavours import (
    QUESTION,
    Client,
    Identities,
    RagflowSseClient,
    RagflowWsClient,
    Servers,
    Stream,
    make_client,
    ragflow_payload,
)
from bench.common import free_port, machine, start, start_gateway, stop

DELAY_S = 0.001
QUIET_S = 0.05  # the forwarder's silence that closes a turn's count
DATA_DIR = "bench/out/wire"
PATHS = ("relay", "gateway")


@dataclass(frozen=True)
class Plan:
    lengths: tuple[int, ...]  # the upstream's deltas, one reply length each
    replies: int  # measured replies per (row, path, length), after one warm-up


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(lengths=(20, 100, 400), replies=1)
    return Plan(lengths=(50, 500, 2000), replies=3)


def reply_text(deltas: int) -> str:
    return "".join(f"tok{index} " for index in range(deltas))


@dataclass(frozen=True)
class Row:
    name: str
    flavour: str  # bench_flavours' flavour
    answer_mode: str | None = None  # what a RAGFlow question asks


ROWS = (
    Row("openai-sse", "openai-sse"),
    Row("ragflow-sse cumulative", "ragflow-sse", "cumulative"),
    Row("ragflow-sse delta", "ragflow-sse", "delta"),
    Row("ragflow-ws delta", "ragflow-ws", "delta"),
    Row("ragflow-ws cumulative", "ragflow-ws", "cumulative"),
    Row("nadoo-ws", "nadoo-ws"),
    Row("socketio", "socketio"),
)


# -- the counting forwarder ----------------------------------------------------------
class Meter:
    """A TCP forwarder on a free loopback port to `target_port`, counting the bytes
    each way over all its connections (one client at a time is measured)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # client → server
        self.down = 0  # server → client
        self.last = time.monotonic()  # when bytes last passed, either way
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> tuple[int, int]:
        return self.up, self.down

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def quiet(self, quiet_s: float = QUIET_S, at_most_s: float = 2.0) -> None:
        """Until no byte has passed for `quiet_s` (at most `at_most_s`)."""
        deadline = time.monotonic() + at_most_s
        while time.monotonic() < deadline:
            idle = time.monotonic() - self.last
            if idle >= quiet_s:
                return
            await asyncio.sleep(quiet_s - idle + 0.001)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:  # each pipe ends as its socket closes
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, up=True),
                self._pipe(server_r, client_w, up=False),
            )
        finally:
            self._writers -= {client_w, server_w}
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                self.last = time.monotonic()
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Either side gone: the other is closed too (no protocol here half-closes).
            writer.close()


# -- RAGFlow clients that ask an answer mode -----------------------------------------
class RagflowSseModeClient(RagflowSseClient):
    """bench_flavours' RAGFlow SSE client, each question asking `answer_mode`."""

    mode = "delta"  # set by `client_for` from the row

    def _body(self, turn: int) -> dict[str, Any]:
        return {**super()._body(turn), "answer_mode": self.mode}

    async def turn(self, index: int, stream: Stream) -> None:
        body = self.body(index)
        stream.began = time.perf_counter()
        async with self.http.post(self.url, json=body, headers=self.headers) as resp:
            if resp.status != 200:
                stream.fail(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                return
            async for line in resp.content:
                if line.startswith(b"data:"):
                    payload = json.loads(line[5:])
                    at = time.perf_counter()
                    ragflow_payload(payload, at, stream, cumulative=self.mode == "cumulative")


class RagflowWsModeClient(RagflowWsClient):
    """bench_flavours' RAGFlow WebSocket client, each question asking `answer_mode`."""

    mode = "delta"  # set by `client_for` from the row

    async def turn(self, index: int, stream: Stream) -> None:
        assert self.ws is not None
        frame = {
            "type": "chat",
            "chat_id": self.assistant,
            "question": QUESTION,
            "stream": True,
            "answer_mode": self.mode,
        }
        stream.began = time.perf_counter()
        await self.ws.send_str(json.dumps(frame))
        cumulative = self.mode == "cumulative"
        async for at, payload in self.frames(stream):
            if ragflow_payload(payload, at, stream, cumulative=cumulative):
                return


def client_for(
    row: Row,
    path: str,
    http: aiohttp.ClientSession,
    servers: Servers,
    ids: Identities,
) -> Client:
    gateway = path == "gateway"
    base = servers.gateway if gateway else servers.relay
    who = ids if gateway else None
    moded = {"ragflow-sse": RagflowSseModeClient, "ragflow-ws": RagflowWsModeClient}
    if row.answer_mode and row.flavour in moded:
        client = moded[row.flavour](http, base, who, 0)
        client.mode = row.answer_mode
        return client
    return make_client(row.flavour, path, 0, http, servers, ids)


# -- one (row, path, length) ---------------------------------------------------------
@dataclass
class Sample:
    setup: tuple[int, int] | None  # (up, down) while connecting
    up: list[int]
    down: list[int]
    errors: list[str]


async def run_one(
    row: Row,
    path: str,
    deltas: int,
    replies: int,
    servers: Servers,
    ids: Identities,
    meter: Meter,
) -> Sample:
    text = reply_text(deltas)
    timeout_s = max(30.0, deltas * DELAY_S * 50)
    sample = Sample(None, [], [], [])
    async with aiohttp.ClientSession() as http:
        client = client_for(row, path, http, servers, ids)
        try:
            await meter.quiet()
            up0, down0 = meter.counts()
            await client.open(replies + 1)
            await meter.quiet()
            up1, down1 = meter.counts()
            sample.setup = (up1 - up0, down1 - down0)
            for index in range(replies + 1):
                stream = Stream()
                before = meter.counts()
                try:
                    await asyncio.wait_for(client.turn(index, stream), timeout_s)
                except TimeoutError:
                    stream.fail(f"no end after {timeout_s:.0f} s ({len(stream.times)} chunks)")
                except Exception as exc:  # a failed reply is reported, not fatal
                    stream.fail(f"{type(exc).__name__}: {exc}")
                await meter.quiet()
                after = meter.counts()
                if stream.error is None and stream.text != text:
                    stream.fail(
                        f"text differs: {len(stream.times)} chunks, {len(stream.text)} of "
                        f"{len(text)} chars, {stream.text[:40]!r}…"
                    )
                if stream.error is not None:
                    sample.errors.append(stream.error)
                    continue
                if index == 0:
                    continue  # the warm-up
                sample.up.append(after[0] - before[0])
                sample.down.append(after[1] - before[1])
        finally:
            await client.close()
    return sample


async def run_length(
    deltas: int,
    replies: int,
    relay_port: int,
    gateway_port: int,
    pids: tuple[int, int],
    rows: Sequence[Row],
    progress: Callable[[str], None],
) -> dict[str, dict[str, Sample]]:
    meters = {"relay": Meter(relay_port), "gateway": Meter(gateway_port)}
    for meter in meters.values():
        await meter.start()
    servers = Servers(
        upstream="",
        relay=meters["relay"].url,
        gateway=meters["gateway"].url,
        relay_pid=pids[0],
        gateway_pid=pids[1],
    )
    # Keys, assistants and sessions are made past the forwarder: not counted.
    ids = Identities(f"http://127.0.0.1:{gateway_port}")
    found: dict[str, dict[str, Sample]] = {}
    try:
        for row in rows:
            found[row.name] = {}
            for path in PATHS:
                progress(f"{deltas} deltas, {row.name}, {path}")
                try:
                    sample = await run_one(row, path, deltas, replies, servers, ids, meters[path])
                except Exception as exc:  # setup failed: report it, go on
                    sample = Sample(None, [], [], [f"{type(exc).__name__}: {exc}"])
                found[row.name][path] = sample
                if sample.errors:
                    print(
                        f"bench_wire: {row.name} {path} {deltas} deltas: "
                        f"{len(sample.errors)} failed repl(ies), first: {sample.errors[0]}",
                        file=sys.stderr,
                    )
    finally:
        for meter in meters.values():
            await meter.stop()
    return found


# -- figures -------------------------------------------------------------------------
def _median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _marginal(totals: dict[int, float | None], a: int, b: int) -> float | None:
    ta, tb = totals.get(a), totals.get(b)
    return (tb - ta) / (b - a) if ta is not None and tb is not None else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value is not None else None


def path_report(samples: dict[int, Sample], lengths: Sequence[int]) -> dict[str, Any]:
    per_length: dict[str, Any] = {}
    totals: dict[int, float | None] = {}
    for deltas in lengths:
        sample = samples[deltas]
        both = [u + d for u, d in zip(sample.up, sample.down, strict=True)]
        total = _median(both)
        totals[deltas] = total
        per_length[str(deltas)] = {
            "down": sample.down,
            "up": sample.up,
            "down_median": _median(sample.down),
            "up_median": _median(sample.up),
            "total_median": total,
            "per_token": _round(total / deltas if total is not None else None),
            "setup": list(sample.setup) if sample.setup is not None else None,
            "failed": len(sample.errors),
        }
    short, middle, long = lengths[0], lengths[1], lengths[-1]
    first = _marginal(totals, short, middle)
    last = _marginal(totals, middle, long)
    return {
        "lengths": per_length,
        "marginal": [_round(first), _round(last)],
        "linearity": _round(last / first if first and last is not None else None, 3),
    }


def run(
    plan_: Plan,
    rows: Sequence[Row] = ROWS,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    samples: dict[str, dict[str, dict[int, Sample]]] = {
        row.name: {path: {} for path in PATHS} for row in rows
    }
    for deltas in plan_.lengths:
        up_port, relay_port, gw_port = free_port(), free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(
                start(
                    ["-m", "bench.servers", "upstream", str(up_port), str(deltas), str(DELAY_S)],
                    health=f"{upstream_url}/models",
                )
            )
            relay = start(
                ["-m", "bench.servers", "flavour-relay", str(relay_port), upstream_url],
                health=f"http://127.0.0.1:{relay_port}/health",
            )
            procs.append(relay)
            gateway = start_gateway(gw_port, upstream_url, {"DATA_DIR": DATA_DIR})
            procs.append(gateway)
            found = asyncio.run(
                run_length(
                    deltas,
                    plan_.replies,
                    relay_port,
                    gw_port,
                    (relay.pid, gateway.pid),
                    rows,
                    progress,
                )
            )
        finally:
            for proc in reversed(procs):
                stop(proc)
        for name, paths in found.items():
            for path, sample in paths.items():
                samples[name][path][deltas] = sample

    result: dict[str, Any] = {
        "upstream": {"lengths": list(plan_.lengths), "delay_ms": DELAY_S * 1000},
        "replies": plan_.replies,
        "rows": {},
    }
    longest = str(plan_.lengths[-1])
    for row in rows:
        reports = {path: path_report(by, plan_.lengths) for path, by in samples[row.name].items()}
        ratio = None
        if "relay" in reports:
            relay_total = reports["relay"]["lengths"][longest]["total_median"]
            gw_total = reports["gateway"]["lengths"][longest]["total_median"]
            if relay_total and gw_total is not None:
                ratio = round(gw_total / relay_total, 3)
        result["rows"][row.name] = {
            "flavour": row.flavour,
            "answer_mode": row.answer_mode,
            "paths": reports,
            "gateway_over_relay": ratio,
        }
    return result


def measure(
    quick: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """{"upstream": {"lengths": [L₁, L₂, L₃], "delay_ms": float},
        "replies": int,
        "rows": {row: {"flavour": str, "answer_mode": str | None,
                       "gateway_over_relay": float | None,  # both ways, at L₃
                       "paths": {path: {
                           "lengths": {str(L): {"down": [int, ...], "up": [int, ...],
                                                "down_median": float | None,
                                                "up_median": float | None,
                                                "total_median": float | None,
                                                "per_token": float | None,
                                                "setup": [up, down] | None,
                                                "failed": int}},
                           "marginal": [L₁→L₂ bytes/delta, L₂→L₃ bytes/delta],
                           "linearity": float | None}}}}}

    row ∈ ROWS' names, path ∈ {"relay", "gateway"};
    `down`/`up` are the measured replies' bytes, both ways (the warm-up and failed
    replies left out).  `progress` is called once per (length, row, path), before
    it starts."""
    return run(plan(quick), ROWS, progress)


# -- the table -----------------------------------------------------------------------
def _bytes(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "–"


def _num(value: float | None, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if value is not None else "–"


def table(result: dict[str, Any]) -> list[str]:
    lengths = result["upstream"]["lengths"]
    short, middle, long = lengths[0], lengths[1], lengths[-1]
    heads = " | ".join(f"{n:,} deltas ↓ / ↑ B" for n in lengths)
    lines = [
        f"| flavour | path | setup ↑ / ↓ B | {heads} | B/delta at {long:,} "
        f"| marginal B/delta {short}→{middle} / {middle}→{long} | linearity "
        f"| gw ÷ relay at {long:,} | failed |",
        "|---|---|---|" + "---|" * len(lengths) + "---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        for path, report in row["paths"].items():
            at = report["lengths"]
            setup = at[str(long)]["setup"]
            setup_cell = f"{setup[0]:,} / {setup[1]:,}" if setup and any(setup) else "–"
            cells = " | ".join(
                f"{_bytes(at[str(n)]['down_median'])} / {_bytes(at[str(n)]['up_median'])}"
                for n in lengths
            )
            first, last = report["marginal"]
            linearity = report["linearity"]
            ratio = row["gateway_over_relay"]
            ratio_cell = f"**×{ratio:.2f}**" if path == "gateway" and ratio is not None else "–"
            failed = sum(entry["failed"] for entry in at.values())
            lines.append(
                f"| {name} | {path} | {setup_cell} | {cells} "
                f"| {_num(at[str(long)]['per_token'])} | {_num(first)} / {_num(last)} "
                f"| **{_num(linearity, 2)}** | {ratio_cell} | {failed} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="replies of 20, 100 and 400 deltas, one each"
    )
    args = parser.parse_args()
    plan_ = plan(args.quick)
    began = time.monotonic()
    result = measure(args.quick, lambda msg: print(f"… {msg}", file=sys.stderr, flush=True))
    took = time.monotonic() - began
    print(f"# Wire bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# replies of {', '.join(f'{n:,}' for n in plan_.lengths)} deltas "
        f"{DELAY_S * 1000:.0f} ms apart; {plan_.replies} repl{'ies' if plan_.replies > 1 else 'y'} each after a warm-up; "
        f"medians; setup excluded from the replies; {took:.0f} s\n"
    )
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
