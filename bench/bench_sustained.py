"""Sustained load: N streams at 50 tokens/s on every flavour, and 1,000 on two replicas.

    python -m bench.bench_sustained [--quick] [--streams 250] [--flavours openai-sse,...]
                                    [--replicas-streams 1000] [--replicas-flavours ...]
                                    [--clients 2] [--turns 2]

The target: at least 250 streams per core at 50 tokens/s sustained on every
flavour — every chunk delivered, no gap between two chunks of a stream over
2× the upstream's interval (40 ms) — and 1,000 streams on this machine with
Redis on and two replicas.

The paced upstream (`bench.servers upstream`) streams each reply as DELTAS
deltas 20 ms apart (50 tokens/s); a reply lasts DELTAS × 20 ms (250 deltas,
5 s; quick: 50, 1 s).  Each stream is a client of its own (bench_flavours'
clients, `make_client`) and its own user (bench_flavours' `Identities`), and
asks one question after the other, back to back: one warm-up turn, then TURNS
measured ones (2).  The streams start at random offsets within the first
RAMP seconds (1 s; quick 0.2), so their chunks come at every phase of the
20 ms interval, as a real load's would, rather than in one burst every 20 ms.

Part 1, per core — one upstream, the bare relay of every flavour
(`bench.servers flavour-relay`) and one gateway (one process: one core, SQLite,
in-process bus).  Per flavour (openai-sse, ragflow-sse, ragflow-ws, nadoo-ws,
socketio) the same N streams (250; quick 50) go to:

* `relay`   — the bare relay: reads the upstream's SSE and writes each delta in
              the flavour's frame, nothing more.  It, the upstream and the client
              share the machine's 2 cores with nothing else: its row is the
              machine's own ceiling at this load.  A flavour whose relay row
              misses the target too says the machine (or the client), not the
              gateway, is the limit;
* `gateway` — the gateway, asked as that flavour's clients ask it.

Part 2, scale-out — two gateway replicas on one Redis (`WEBSOCKET_MANAGER=redis`,
a key prefix of this run's own) and one PostgreSQL database (made for the run,
dropped after), each replica with an upstream of its own (the replicas stand for
two machines, each near its model server; one upstream process would be the
first thing to saturate at 1,000 streams).  M streams (1,000; quick 100), half
on each replica, on:

* `openai-sse` — stream i wholly on replica i mod 2;
* `socketio`   — the web app's turn with its socket on replica i mod 2 and its
                 POST on the other: every event of every reply crosses Redis
                 (the dearer case; `bench.bench_scale` has the sticky one).

How a turn is asked and what counts as a chunk is bench_flavours' (its
docstring).  Per (part, flavour, path):

* `chunks` / `expected` — content deltas received in the measured turns, against
  streams × TURNS × DELTAS; `broken` — measured turns whose text is not the
  upstream's whole reply (or that failed);
* `gap_ms`   — p50, p99, p99.9 and max of the gaps between consecutive chunks
  of one turn, and `gaps_over`: how many exceed 2× the interval (40 ms);
* `ttft_ms`  — p50 and p99 of request (POST or frame) to first chunk, measured
  turns only, so under the full load;
* `cpu_share` — CPU seconds ÷ wall seconds (from /proc) over the steady window
  (`window_s`: from the moment the last stream began its first measured turn to
  the moment the first stream had its last chunk, when all the streams are in
  measured turns; the whole measured span if a run is too short to have one),
  of each server process (relay, gateway or each replica), of the upstream(s),
  of the client processes together and, part 2, of the Redis server and of the
  PostgreSQL backends serving the run's database (`PG`); and of the whole
  `machine` from /proc/stat, every process of every tenant: the table shows
  beside it what of it was none of the bench's processes, as the machine may be
  shared.  1.0 is one core saturated; the machine has 2;
* `wait_share` — per role, the seconds per second its main thread (where its
  event loop runs) was ready to run but waited for a core
  (/proc/PID/schedstat): a server far from saturating its core but waiting
  for one often is held back by the machine, not by its own work;
* `listen_overflows` — SYNs dropped because a listening socket's accept queue was
  full, machine-wide (TcpExt ListenOverflows), from the streams' start to the
  last turn's end: a client whose SYN is dropped sends it again 1 s later (then
  3 s, 7 s…), which shows as a TTFT of seconds;
* `cpu_us_per_chunk` — the server process(es)' CPU over the window ÷ the chunks
  delivered in it, and `streams_per_core` — how many streams at 50 tokens/s
  one core of server would carry at that cost, CPU alone: the target's "250 per
  core" read from CPU, whatever else on the machine held the run back (the cost
  per chunk is somewhat higher on a crowded machine than on a quiet one);
* `client_lag_ms` — p99 and max lateness of a 10 ms timer in the client
  processes over the window: a client loop that late delays a chunk's reading
  as much, so it can make a gap of that size on its own.

`met` is the target read strictly — every chunk delivered, no broken turn and
the largest gap ≤ 40 ms: the target says "no gap", so the max is the honest
reading; `met_p99_9` reads the gap at p99.9 instead, so a reader sees whether a
miss is a handful of stalls or the bulk of the load.  The table's last column
reads a missed row's figures, in this order: a server process at ≥ 0.9 of a
core (saturated); the machine ≥ 90 % busy (every core, whoever used it); a
server's loop waiting for a core ≥ 20 % of the time; the client's loop late by
as much as the worst gap (less the interval); the bare relay of the same
flavour missing too (the machine's ceiling at this load); else the server's own
latency.

The load comes from CLIENTS client processes (2; `--clients`), spawned once and
given every row's streams (stream i to process i mod CLIENTS), started together
at one instant: one Python client process parsing 12,500 chunks/s (250
streams) or 50,000 (1,000) would itself be the narrowest pipe, and its loop's
lateness would show up as the server's gaps.  Two processes let it use both
cores when it needs them; they run on uvloop (`bench.servers.event_loop`), as
the servers do.  Their CPU share and loop lateness are in the table, so a
reader can tell a late client from a slow server.  Client, upstream(s),
server(s), Redis and PostgreSQL all share the machine's 2 cores: at the
target's own reading (250 streams per core of gateway), part 2's 1,000 streams
want 4 cores of gateway alone, so on this machine it measures how the replicas
degrade, and `streams_per_core` what they would carry with cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_flavours import (
    FLAVOURS,
    Client,
    Identities,
    Servers,
    SioClient,
    Stream,
    make_client,
)
from bench.common import (
    CLOCK_TICKS,
    ROOT,
    cpu_seconds,
    free_port,
    machine,
    percentile,
    start,
    start_gateway,
    stop,
)
from bench.servers import event_loop

REPLICA_FLAVOURS = ("openai-sse", "socketio")
INTERVAL_S = 0.02  # 50 tokens/s
LAG_TICK_S = 0.01
MACHINE = "machine"  # the CPU share of all the machine's processes, of 2 cores
SERVERS = ("relay", "gateway", "replica A", "replica B")  # the roles measured
WAIT = " wait"  # a role's run-queue wait, beside its CPU
OUTPUT_DIR = "bench/out"
# PostgreSQL as the tests reach it: user postgres over loopback, never a password.
PSQL = ("psql", "-w", "-X", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres")


@dataclass(frozen=True)
class Plan:
    streams: int  # N, part 1 (per flavour and path)
    replica_streams: int  # M, part 2 (split over the two replicas)
    deltas: int
    interval_s: float
    turns: int  # measured turns per stream, after one warm-up turn
    ramp_s: float  # streams start at random offsets within it
    clients: int  # client processes
    flavours: tuple[str, ...]
    replica_flavours: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole reply of the paced upstream."""
        return "".join(f"tok{index} " for index in range(self.deltas))

    @property
    def gap_limit_s(self) -> float:
        return 2 * self.interval_s

    @property
    def turn_timeout_s(self) -> float:
        return max(30.0, self.deltas * self.interval_s * 10)


def plan(
    quick: bool,
    streams: int | None = None,
    replica_streams: int | None = None,
    flavours: Sequence[str] = FLAVOURS,
    replica_flavours: Sequence[str] = REPLICA_FLAVOURS,
    clients: int = 2,
    turns: int | None = None,
) -> Plan:
    return Plan(
        streams=streams or (50 if quick else 250),
        replica_streams=replica_streams
        if replica_streams is not None
        else (100 if quick else 1000),
        deltas=50 if quick else 250,
        interval_s=INTERVAL_S,
        turns=turns or 2,
        ramp_s=0.2 if quick else 1.0,
        clients=clients,
        flavours=tuple(flavours),
        replica_flavours=tuple(replica_flavours),
    )


# -- the client processes -----------------------------------------------------------
class CrossReplicaSio(SioClient):
    """The web app's turn with its socket on one replica and its POST on the other."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        post_base: str,
        socket_base: str,
        ids: Identities,
        index: int,
    ) -> None:
        super().__init__(http, post_base, ids, index)
        self.socket_base = socket_base

    async def open(self, turns: int) -> None:
        # SioClient connects to `base` and POSTs to `base`: connect elsewhere.
        post_base, self.base = self.base, self.socket_base
        try:
            await super().open(turns)
        finally:
            self.base = post_base


@dataclass(frozen=True)
class Target:
    """Where one stream goes."""

    index: int
    path: str  # "relay" or "gateway" (make_client's)
    servers: Servers
    socket_base: str | None = None  # socketio on another replica than its POSTs
    offset_s: float = 0.0  # its start, after the common instant


@dataclass(frozen=True)
class Job:
    """One row's streams for one client process."""

    flavour: str
    targets: tuple[Target, ...]
    turns: int
    text: str
    timeout_s: float


def _client(
    job: Job, target: Target, http: aiohttp.ClientSession, ids: dict[str, Identities]
) -> Client:
    gateway = target.servers.gateway
    if gateway not in ids:  # a user per stream on each gateway (part 2: each replica)
        ids[gateway] = Identities(gateway)
    who = ids[gateway]
    if target.socket_base is not None:
        return CrossReplicaSio(http, target.servers.gateway, target.socket_base, who, target.index)
    return make_client(job.flavour, target.path, target.index, http, target.servers, who)


def _turn_record(stream: Stream) -> dict[str, Any]:
    return {"began": stream.began, "times": stream.times, "error": stream.error}


def text_fault(stream: Stream, whole: str) -> str:
    """How a turn's text falls short of the whole reply."""
    text = stream.text
    if whole.startswith(text):
        return f"text cut short: {len(stream.times)} chunks, {len(text)} of {len(whole)} characters"
    at = next(
        (i for i, (a, b) in enumerate(zip(text, whole, strict=False)) if a != b),
        min(len(text), len(whole)),
    )
    return (
        f"text differs from character {at} of {len(whole)}: "
        f"{text[at : at + 16]!r}… for {whole[at : at + 16]!r}… ({len(stream.times)} chunks)"
    )


async def _run_job(job: Job, conn: Connection) -> dict[str, Any]:
    """Open every client, say ready, wait for the common instant, run the turns."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    ids: dict[str, Identities] = {}
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [_client(job, target, http, ids) for target in job.targets]
        opened: list[str | None] = [None] * len(clients)
        # Setup is not measured; at most 50 at once (a burst of new users, keys,
        # assistants and sessions is not what is measured).
        gate = asyncio.Semaphore(50)

        async def open_one(slot: int, client: Client) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(client.open(job.turns + 1), 60)
                except Exception as exc:  # that stream fails, the others go on
                    opened[slot] = f"open: {type(exc).__name__}: {exc}"

        try:
            await asyncio.gather(*(open_one(slot, c) for slot, c in enumerate(clients)))
            conn.send("ready")
            zero: float = await loop.run_in_executor(None, conn.recv)

            lags: list[tuple[float, float]] = []
            running = True

            async def ticker() -> None:
                while running:
                    before = time.perf_counter()
                    await asyncio.sleep(LAG_TICK_S)
                    lags.append((before, time.perf_counter() - before - LAG_TICK_S))

            async def drive(slot: int, client: Client, target: Target) -> list[dict[str, Any]]:
                failed = opened[slot]
                await asyncio.sleep(max(0.0, zero + target.offset_s - time.perf_counter()))
                turns: list[dict[str, Any]] = []
                for index in range(job.turns + 1):
                    stream = Stream()
                    if failed:
                        stream.fail(failed)
                    else:
                        try:
                            await asyncio.wait_for(client.turn(index, stream), job.timeout_s)
                        except TimeoutError:
                            # How far it got says where it stopped: never began
                            # (0 chunks), or lost its tail.
                            stream.fail(
                                f"no end after {job.timeout_s:.0f} s "
                                f"({len(stream.times)} chunks, {len(stream.text)} of "
                                f"{len(job.text)} characters)"
                            )
                        except Exception as exc:  # a failed turn is reported, not fatal
                            stream.fail(f"{type(exc).__name__}: {exc}")
                    if stream.error is None and stream.text != job.text:
                        stream.fail(text_fault(stream, job.text))
                    if index > 0:  # turn 0 warms up
                        turns.append(_turn_record(stream))
                return turns

            tick = loop.create_task(ticker())
            per_stream = await asyncio.gather(
                *(
                    drive(slot, c, t)
                    for slot, (c, t) in enumerate(zip(clients, job.targets, strict=True))
                )
            )
            running = False
            await tick
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return {"streams": per_stream, "lags": lags}


def _worker(conn: Connection) -> None:
    """A client process: runs the jobs it is sent, one after the other, until None."""
    while (job := conn.recv()) is not None:
        try:
            with asyncio.Runner(loop_factory=event_loop) as runner:
                conn.send(runner.run(_run_job(job, conn)))
        except Exception as exc:  # the parent reports it
            conn.send({"failed": f"{type(exc).__name__}: {exc}"})


def run_queue_seconds(pid: int) -> float:
    """How long the process's main thread has waited for a core, ready to run
    (/proc/PID/schedstat: on-CPU ns, run-queue ns, timeslices)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def listen_overflows() -> int:
    """Connections the machine's listening sockets had no room for in their accept
    queue (TcpExt ListenOverflows, every socket of every process): each is a SYN
    dropped, that the client sends again after 1 s, then 3 s, 7 s..."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            return int(values.split()[names.split().index("ListenOverflows")])
    return 0


# The processes of one role (a server, the upstreams, Redis…), asked at each sample.
Pids = Callable[[], list[int]]


def fixed(*pids: int) -> Pids:
    return lambda: list(pids)


def postgres_backends(database: str) -> Pids:
    """The PostgreSQL server processes serving `database` (the replicas' pools, which
    may grow), from the postmaster's children."""
    data_dir = subprocess.run(
        [*PSQL, "-d", "postgres", "-tAc", "show data_directory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    postmaster = Path(data_dir, "postmaster.pid").read_text().split()[0]
    mark = f" {database} ".encode()

    def pids() -> list[int]:
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        found = []
        for child in children:
            with contextlib.suppress(OSError):  # gone meanwhile
                if mark in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
        return found

    return pids


class Sampler:
    """CPU seconds of the processes of each role (and, as `role wait`, the seconds
    their main threads, where the event loops run, were ready to run but waited
    for a core), read from /proc every 0.1 s on a thread."""

    def __init__(self, roles: dict[str, Pids]) -> None:
        self.roles = roles
        self.samples: list[tuple[float, dict[str, dict[int, float]]]] = []
        self.listen_overflows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> None:
        # The whole machine's busy time, every process of every tenant (/proc/stat).
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
        values: dict[str, dict[int, float]] = {MACHINE: {0: busy / CLOCK_TICKS}}
        for role, pids in self.roles.items():
            values[role], values[role + WAIT] = {}, {}
            for pid in pids():
                with contextlib.suppress(OSError, ValueError, IndexError):  # a process gone
                    values[role][pid] = cpu_seconds(pid)
                    values[role + WAIT][pid] = run_queue_seconds(pid)
        self.samples.append((time.perf_counter(), values))

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._read()

    def __enter__(self) -> Sampler:
        self.listen_overflows = -listen_overflows()
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        self.listen_overflows += listen_overflows()

    def span(self, begin: float, end: float) -> tuple[float, float]:
        """The first and last samples inside [begin, end] (all of them if fewer than
        two fall inside)."""
        inside = [at for at, _ in self.samples if begin <= at <= end]
        if len(inside) < 2:
            inside = [at for at, _ in self.samples]
        return inside[0], inside[-1]

    def shares(self, begin: float, end: float) -> dict[str, float]:
        """CPU seconds ÷ wall seconds per role between the samples nearest inside
        [begin, end] (the widest pair if fewer than two fall inside).  A process
        first seen inside counts from 0 (born meanwhile), one gone by the last
        sample at its last value."""
        inside = [s for s in self.samples if begin <= s[0] <= end]
        if len(inside) < 2:
            inside = self.samples
        wall = inside[-1][0] - inside[0][0]
        if wall <= 0:
            return {}
        shares = {}
        for role in inside[0][1]:
            latest: dict[int, float] = {}
            for _, values in inside:
                latest.update(values[role])
            first = inside[0][1][role]
            shares[role] = sum(cpu - first.get(pid, 0.0) for pid, cpu in latest.items()) / wall
        return shares


class ClientPool:
    """CLIENTS client processes (spawned: a clean interpreter each, whatever the parent
    runs), kept for the whole run."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(size):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [int(proc.pid) for proc in self.procs]

    def _recv(self, conn: Connection, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise RuntimeError(f"a client process said nothing for {timeout_s:.0f} s")
        return conn.recv()

    def run(
        self, jobs: list[Job], servers: dict[str, Pids], timeout_s: float
    ) -> tuple[list[dict[str, Any]], Sampler]:
        """Run one job per process, started at one instant; CPU sampled meanwhile."""
        conns = self.conns[: len(jobs)]
        for conn, job in zip(conns, jobs, strict=True):
            conn.send(job)
        # A process whose job failed before it was ready has answered already;
        # the others wait for the instant, and answer after their turns.
        answers = [self._recv(conn, 600) for conn in conns]
        ready = [conn for conn, answer in zip(conns, answers, strict=True) if answer == "ready"]
        with Sampler({**servers, "client": fixed(*self.pids)}) as sampler:
            zero = time.perf_counter() + 0.2
            for conn in ready:
                conn.send(zero)
            results = [
                self._recv(conn, timeout_s) if answer == "ready" else answer
                for conn, answer in zip(conns, answers, strict=True)
            ]
        for result in results:
            if "failed" in result:
                raise RuntimeError(f"client process: {result['failed']}")
        return results, sampler

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            with contextlib.suppress(OSError):  # a process already gone
                conn.send(None)
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# -- one row -------------------------------------------------------------------------
@dataclass
class Row:
    part: str
    flavour: str
    path: str
    streams: int
    turns: list[dict[str, Any]] = field(default_factory=list)
    lags: list[tuple[float, float]] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)
    cpu: dict[str, float] = field(default_factory=dict)
    wait: dict[str, float] = field(default_factory=dict)
    listen_overflows: int = 0
    errors: list[str] = field(default_factory=list)

    def report(self, plan_: Plan) -> dict[str, Any]:
        limit = plan_.gap_limit_s
        gaps = [b - a for t in self.turns for a, b in itertools.pairwise(t["times"])]
        ttfts = [t["times"][0] - t["began"] for t in self.turns if t["times"]]
        lags = [lag for at, lag in self.lags if self.window[0] <= at <= self.window[1]]
        expected = self.streams * plan_.turns * plan_.deltas
        chunks = sum(len(t["times"]) for t in self.turns)
        broken = sum(t["error"] is not None for t in self.turns) + (
            self.streams * plan_.turns - len(self.turns)
        )

        def ms(values: Sequence[float], q: float) -> float | None:
            return round(percentile(values, q) * 1000, 2) if values else None

        # The servers' CPU per chunk delivered in the window, and so how many streams
        # at the upstream's rate one core of them would carry, CPU alone.
        begin, end = self.window
        in_window = sum(begin <= at <= end for t in self.turns for at in t["times"])
        server_s = sum(self.cpu.get(role, 0.0) for role in SERVERS) * (end - begin)
        per_chunk = server_s / in_window if in_window and server_s else None
        over = sum(gap > limit for gap in gaps)
        p99_9 = percentile(gaps, 99.9) if gaps else 0.0
        whole = chunks == expected and broken == 0
        return {
            "part": self.part,
            "flavour": self.flavour,
            "path": self.path,
            "streams": self.streams,
            "chunks": chunks,
            "expected": expected,
            "broken": broken,
            "errors": self.errors[:3],
            "error_kinds": dict(
                collections.Counter(re.sub(r"\d+", "N", e.split(":")[0]) for e in self.errors)
            ),
            "gaps": len(gaps),
            "gaps_over": over,
            "gap_ms": {
                "p50": ms(gaps, 50),
                "p99": ms(gaps, 99),
                "p99_9": ms(gaps, 99.9),
                "max": round(max(gaps) * 1000, 2) if gaps else None,
            },
            "ttft_ms": {"p50": ms(ttfts, 50), "p99": ms(ttfts, 99)},
            "window_s": round(end - begin, 2),
            "cpu_us_per_chunk": round(per_chunk * 1e6, 1) if per_chunk else None,
            "streams_per_core": round(plan_.interval_s / per_chunk) if per_chunk else None,
            "cpu_share": {role: round(share, 3) for role, share in self.cpu.items()},
            "wait_share": {role: round(share, 3) for role, share in self.wait.items()},
            "listen_overflows": self.listen_overflows,
            "client_lag_ms": {
                "p99": ms(lags, 99),
                "max": round(max(lags) * 1000, 2) if lags else None,
            },
            "met": whole and bool(gaps) and over == 0,
            "met_p99_9": whole and bool(gaps) and p99_9 <= limit,
        }


def steady_window(turns_per_stream: list[list[dict[str, Any]]]) -> tuple[float, float]:
    """From the last stream's first measured turn to the first stream's last chunk:
    all streams busy; the whole measured span when the run is too short for one."""
    starts = [turns[0]["began"] for turns in turns_per_stream if turns and turns[0]["times"]]
    ends = [
        max(t["times"][-1] for t in turns if t["times"])
        for turns in turns_per_stream
        if any(t["times"] for t in turns)
    ]
    if not starts or not ends:
        return (0.0, 0.0)
    begin, end = max(starts), min(ends)
    if end - begin < 0.5:
        begin, end = min(starts), max(ends)
    return (begin, end)


def run_row(
    pool: ClientPool,
    plan_: Plan,
    part: str,
    flavour: str,
    path: str,
    targets: list[Target],
    servers: dict[str, Pids],
) -> Row:
    rng = random.Random(len(targets))
    targets = [
        Target(t.index, t.path, t.servers, t.socket_base, rng.uniform(0, plan_.ramp_s))
        for t in targets
    ]
    jobs = [
        Job(
            flavour=flavour,
            targets=tuple(targets[k :: plan_.clients]),
            turns=plan_.turns,
            text=plan_.text,
            timeout_s=plan_.turn_timeout_s,
        )
        for k in range(min(plan_.clients, len(targets)))
    ]
    row = Row(part, flavour, path, len(targets))
    budget = plan_.ramp_s + (plan_.turns + 1) * plan_.turn_timeout_s + 60
    try:
        results, sampler = pool.run(jobs, servers, budget)
    except Exception as exc:  # a row that cannot run is reported, the others go on
        row.errors.append(f"{type(exc).__name__}: {exc}")
        return row
    per_stream = [turns for result in results for turns in result["streams"]]
    row.turns = [turn for turns in per_stream for turn in turns]
    row.lags = [lag for result in results for lag in result["lags"]]
    row.window = sampler.span(*steady_window(per_stream))
    shares = sampler.shares(*row.window)
    row.cpu = {role: share for role, share in shares.items() if not role.endswith(WAIT)}
    row.wait = {role[: -len(WAIT)]: v for role, v in shares.items() if role.endswith(WAIT)}
    row.errors = [t["error"] for t in row.turns if t["error"] is not None]
    row.listen_overflows = sampler.listen_overflows
    return row


def _reported(row: Row, plan_: Plan) -> dict[str, Any]:
    """The row's report; its failures on stderr, as bench_flavours does."""
    found = row.report(plan_)
    if row.errors:
        print(
            f"bench_sustained: {row.flavour} {row.path}: {len(row.errors)} failed "
            f"turn(s) {found['error_kinds']}, first: {row.errors[0]}",
            file=sys.stderr,
        )
        if len(set(row.errors)) > 1:
            for error, count in collections.Counter(row.errors).most_common(5):
                print(f"bench_sustained:   {count} × {error}", file=sys.stderr)
    return found


# -- part 1: one gateway, one core ---------------------------------------------------
def _upstream(port: int, plan_: Plan) -> subprocess.Popen[bytes]:
    url = f"http://127.0.0.1:{port}/v1"
    pace = [str(plan_.deltas), str(plan_.interval_s)]
    return start(["-m", "bench.servers", "upstream", str(port), *pace], health=f"{url}/models")


def per_core(
    pool: ClientPool, plan_: Plan, tag: str, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    up_port, relay_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        upstream = _upstream(up_port, plan_)
        procs.append(upstream)
        relay = start(
            ["-m", "bench.servers", "flavour-relay", str(relay_port), upstream_url],
            health=f"http://127.0.0.1:{relay_port}/health",
        )
        procs.append(relay)
        gateway = start_gateway(gw_port, upstream_url, {"DATA_DIR": f"{OUTPUT_DIR}/{tag}/one"})
        procs.append(gateway)
        servers = Servers(
            upstream=upstream_url,
            relay=f"http://127.0.0.1:{relay_port}",
            gateway=f"http://127.0.0.1:{gw_port}",
            relay_pid=relay.pid,
            gateway_pid=gateway.pid,
        )
        for flavour in plan_.flavours:
            for path, pid in (("relay", relay.pid), ("gateway", gateway.pid)):
                progress(f"{flavour}, {plan_.streams} streams, {path}")
                targets = [Target(i, path, servers) for i in range(plan_.streams)]
                row = run_row(
                    pool,
                    plan_,
                    "per core",
                    flavour,
                    path,
                    targets,
                    {path: fixed(pid), "upstream": fixed(upstream.pid)},
                )
                rows.append(_reported(row, plan_))
    finally:
        for proc in procs:
            stop(proc)
    return rows


# -- part 2: two replicas on Redis and PostgreSQL ------------------------------------
def _psql(sql: str) -> None:
    subprocess.run(
        [*PSQL, "-d", "postgres", "-c", sql],
        check=True,
        capture_output=True,
    )


def _redis_cleanup(prefix: str) -> None:
    """Drop the run's keys (heartbeats, presence) from the shared Redis."""
    keys = subprocess.run(
        ["redis-cli", "-p", "6379", "--scan", "--pattern", f"{prefix}*"],
        capture_output=True,
        text=True,
    ).stdout.split()
    for start_at in range(0, len(keys), 500):
        subprocess.run(
            ["redis-cli", "-p", "6379", "del", *keys[start_at : start_at + 500]],
            capture_output=True,
        )


def scale_out(
    pool: ClientPool, plan_: Plan, tag: str, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    from bench.bench_scale import redis_pid

    database = f"bench_{tag.replace('-', '_')}"
    prefix = f"bench-{tag}:"
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "WEBSOCKET_MANAGER": "redis",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
    }
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    _psql(f'CREATE DATABASE "{database}"')
    try:
        replicas: list[Servers] = []
        upstream_pids: list[int] = []
        # One after the other: the first makes the schema.
        for name in ("a", "b"):
            up_port, gw_port = free_port(), free_port()
            upstream_url = f"http://127.0.0.1:{up_port}/v1"
            upstream = _upstream(up_port, plan_)
            procs.append(upstream)
            upstream_pids.append(upstream.pid)
            replica = start_gateway(
                gw_port, upstream_url, {**env, "DATA_DIR": f"{OUTPUT_DIR}/{tag}/{name}"}
            )
            procs.append(replica)
            url = f"http://127.0.0.1:{gw_port}"
            replicas.append(Servers(upstream_url, "", url, 0, replica.pid))
        roles = {
            "replica A": fixed(replicas[0].gateway_pid),
            "replica B": fixed(replicas[1].gateway_pid),
            "upstream": fixed(*upstream_pids),
            "redis": fixed(redis_pid()),
            "postgres": postgres_backends(database),
        }
        for flavour in plan_.replica_flavours:
            cross = flavour == "socketio"
            path = "2 replicas, socket ≠ turn" if cross else "2 replicas"
            progress(f"{flavour}, {plan_.replica_streams} streams, {path}")
            targets = [
                Target(
                    i,
                    "gateway",
                    replicas[(i + cross) % 2],
                    socket_base=replicas[i % 2].gateway if cross else None,
                )
                for i in range(plan_.replica_streams)
            ]
            row = run_row(pool, plan_, "scale-out", flavour, path, targets, roles)
            rows.append(_reported(row, plan_))
    finally:
        for proc in procs:
            stop(proc)
        _psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _redis_cleanup(prefix)
    return rows


def run(plan_: Plan, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    tag = f"sustained-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {
        "upstream": {"deltas": plan_.deltas, "interval_ms": plan_.interval_s * 1000},
        "turns": plan_.turns,
        "ramp_s": plan_.ramp_s,
        "clients": plan_.clients,
        "gap_limit_ms": plan_.gap_limit_s * 1000,
        "rows": [],
    }
    pool = ClientPool(plan_.clients)
    try:
        if plan_.flavours and plan_.streams:
            result["rows"] += per_core(pool, plan_, tag, progress)
        if plan_.replica_flavours and plan_.replica_streams:
            result["rows"] += scale_out(pool, plan_, tag, progress)
    finally:
        pool.close()
        shutil.rmtree(ROOT / OUTPUT_DIR / tag, ignore_errors=True)
    return result


def measure(
    quick: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """{"upstream": {"deltas": int, "interval_ms": float},
        "turns": int, "ramp_s": float, "clients": int, "gap_limit_ms": float,
        "rows": [{"part": "per core" | "scale-out", "flavour": str,
                  "path": "relay" | "gateway" | "2 replicas" | "2 replicas, socket ≠ turn",
                  "streams": int, "chunks": int, "expected": int, "broken": int,
                  "errors": [str, ...],  # the first three
                  "error_kinds": {str: int},  # how many of each (digits as N)
                  "gaps": int, "gaps_over": int,
                  "gap_ms": {"p50", "p99", "p99_9", "max": float | None},
                  "ttft_ms": {"p50", "p99": float | None},
                  "window_s": float,
                  "cpu_share": {role: float},  # relay | gateway | replica A | replica B,
                                               # upstream, client, machine;
                                               # scale-out: redis, postgres
                  "wait_share": {role: float},  # the same roles but machine: run-queue
                                                # wait of their main threads
                  "listen_overflows": int,  # SYNs dropped, machine-wide, from the
                                            # common instant to the last turn's end
                  "cpu_us_per_chunk": float | None, "streams_per_core": int | None,
                  "client_lag_ms": {"p99", "max": float | None},
                  "met": bool, "met_p99_9": bool}, ...]}

    Part 1 has a relay and a gateway row per flavour of FLAVOURS, part 2 a row
    per flavour of REPLICA_FLAVOURS.  `progress` is called once per row, before
    it starts."""
    return run(plan(quick), progress)


# -- the table -----------------------------------------------------------------------
def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _server_cpu(share: dict[str, float]) -> str:
    """The server process(es), Redis and PostgreSQL beside them."""
    cell = " + ".join(f"{share[role]:.2f}" for role in SERVERS if role in share) or "–"
    beside = [
        f"{name} {share[role]:.2f}"
        for role, name in (("redis", "Redis"), ("postgres", "PG"))
        if role in share
    ]
    return f"{cell} ({', '.join(beside)})" if beside else cell


def _server_wait(wait: dict[str, float]) -> str:
    return " + ".join(f"{wait[role]:.2f}" for role in SERVERS if role in wait) or "–"


def _machine_cpu(share: dict[str, float]) -> str:
    """The whole machine, and what of it is no process of the bench's."""
    if MACHINE not in share:
        return "–"
    others = share[MACHINE] - sum(v for role, v in share.items() if role != MACHINE)
    return f"{share[MACHINE]:.2f} ({max(0.0, others):.2f})"


def limit_of(row: dict[str, Any], relay: dict[str, Any] | None, interval_ms: float) -> str:
    """What most likely held back a row that missed the target: a reading of its
    figures, in this order, not a proof (the table has them all)."""
    if row["met"]:
        return ""
    share = row["cpu_share"]
    cores = os.cpu_count() or 1
    servers = [share[role] for role in SERVERS if role in share]
    if servers and max(servers) >= 0.9:
        return "server CPU: a core saturated"
    if share.get(MACHINE, 0.0) >= 0.9 * cores:
        return f"the machine: its {cores} cores busy"
    waits = [row["wait_share"][role] for role in SERVERS if role in row["wait_share"]]
    if waits and max(waits) >= 0.2:
        return f"the machine: the server's loop waited for a core {max(waits):.0%} of the time"
    lag, worst = row["client_lag_ms"]["max"], row["gap_ms"]["max"]
    if lag is not None and worst is not None and lag + interval_ms >= worst:
        return "the client: its loop as late as the worst gap"
    if relay is not None and not relay["met"]:
        return "the machine: the bare relay misses too"
    return "server latency, no core saturated"


def table(result: dict[str, Any]) -> list[str]:
    interval = result["upstream"]["interval_ms"]
    lines = [
        "| part | flavour | path | streams | chunks (expected) | broken turns "
        "| gap p50 / p99 / p99.9 / max ms | gaps > 2× interval | TTFT p50 / p99 ms "
        "| CPU server | server loop's wait for a core | CPU upstream | CPU client "
        "| CPU machine (not the bench's) | SYNs dropped "
        "| window s | server µs/chunk → streams/core | client loop lag p99 / max ms "
        "| target met? (max gap) | at p99.9 | held back by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    relays = {r["flavour"]: r for r in result["rows"] if r["path"] == "relay"}
    for row in result["rows"]:
        gap, ttft, lag, share = (
            row["gap_ms"],
            row["ttft_ms"],
            row["client_lag_ms"],
            row["cpu_share"],
        )
        over = f"{row['gaps_over']} ({row['gaps_over'] / row['gaps']:.1%})" if row["gaps"] else "–"
        relay = relays.get(row["flavour"]) if row["path"] == "gateway" else None
        capacity = (
            f"{row['cpu_us_per_chunk']:.0f} → {row['streams_per_core']}"
            if row["cpu_us_per_chunk"]
            else "–"
        )
        lines.append(
            f"| {row['part']} | {row['flavour']} | {row['path']} | {row['streams']} "
            f"| {row['chunks']} ({row['expected']}) | {row['broken']} "
            f"| {_num(gap['p50'])} / {_num(gap['p99'])} / {_num(gap['p99_9'])} / "
            f"{_num(gap['max'])} | {over} | {_num(ttft['p50'], 0)} / {_num(ttft['p99'], 0)} "
            f"| {_server_cpu(share)} | {_server_wait(row['wait_share'])} "
            f"| {_num(share.get('upstream'), 2)} "
            f"| {_num(share.get('client'), 2)} | {_machine_cpu(share)} "
            f"| {row['listen_overflows']} | {row['window_s']:.1f} "
            f"| {capacity} | {_num(lag['p99'])} / {_num(lag['max'])} "
            f"| {'✓' if row['met'] else '✗'} | {'✓' if row['met_p99_9'] else '✗'} "
            f"| {limit_of(row, relay, interval)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="50 and 100 streams, replies of 1 s: a smoke run"
    )
    parser.add_argument("--streams", type=int, default=None, help="N, part 1 (250; quick 50)")
    parser.add_argument(
        "--flavours",
        default=",".join(FLAVOURS),
        help="part 1, comma-separated subset of " + ", ".join(FLAVOURS) + " (empty: none)",
    )
    parser.add_argument(
        "--replicas-streams",
        type=int,
        default=None,
        help="M, part 2, half on each replica (1000; quick 100; 0: no part 2)",
    )
    parser.add_argument(
        "--replicas-flavours",
        default=",".join(REPLICA_FLAVOURS),
        help="part 2, comma-separated subset of " + ", ".join(REPLICA_FLAVOURS),
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes (2)")
    parser.add_argument("--turns", type=int, default=None, help="measured turns per stream (2)")
    args = parser.parse_args()

    def names(value: str, known: Sequence[str]) -> list[str]:
        found = [name.strip() for name in value.split(",") if name.strip()]
        unknown = set(found) - set(known)
        if unknown:
            parser.error(f"unknown flavour(s): {', '.join(sorted(unknown))}")
        return found

    plan_ = plan(
        args.quick,
        streams=args.streams,
        replica_streams=args.replicas_streams,
        flavours=names(args.flavours, FLAVOURS),
        replica_flavours=names(args.replicas_flavours, REPLICA_FLAVOURS),
        clients=max(1, args.clients),
        turns=args.turns,
    )
    began = time.monotonic()
    result = run(plan_, lambda msg: print(f"… {msg}", file=sys.stderr, flush=True))
    took = time.monotonic() - began
    print(f"# Sustained load bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# {plan_.deltas} deltas {plan_.interval_s * 1000:.0f} ms apart per reply; each "
        f"stream a warm-up turn then {plan_.turns} measured, back to back, started within "
        f"{plan_.ramp_s:g} s; gap target ≤ {plan_.gap_limit_s * 1000:.0f} ms; "
        f"{plan_.clients} client process(es); {took:.0f} s\n"
    )
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
