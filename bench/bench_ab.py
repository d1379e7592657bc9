"""One change, before and after, in the same run: the gateway of a git revision
against the gateway of the working tree, under the same OpenAI SSE load.

    python -m bench.bench_ab --before HEAD~1 [--streams 200] [--pairs 8] [--flavour nadoo-ws]

How each lever of bench/RESULTS.md ("Levers") is measured.  The revision's
`gateway/` package is extracted with `git archive` into bench/out/ab/<rev>/
and run from there with this virtualenv (so only the code differs, not the
dependencies); the working tree's runs beside it.  Both sit behind one paced
upstream (`bench.servers upstream`, 64 deltas 20 ms apart), each with a data
dir of its own.  A pair is one load on each, the order alternating pair by
pair (before-after, then after-before) so a drift of the shared machine
falls on both sides; the figure is the median of the pairs' ratios of CPU
per delivered chunk (after ÷ before; below 1 is cheaper), with the lowest
and highest pair beside it, and the TTFT p50 of each side.  `--flavour socketio` runs the web app's turn
instead (`bench.bench_socketio`: a stored chat, one python-socketio client per
user): CPU per delivered event, and the p99 gap between events in place of
the TTFT.  `--flavour nadoo-ws` (or `ragflow-ws`, `ragflow-sse`, `openai-sse`)
runs that flavour's client of `bench.bench_flavours` instead, one user per
stream on each side (made in the warm-up), against the same upstream.
`--deltas 1` makes each reply one delta long, so the CPU per chunk is the CPU
per reply: how a lever on what each request costs once (its token checked,
its model server asked, its end) is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import bench_flavours, bench_sse
from bench.common import BENCH_SECRET, ROOT, bench_auth, free_port, machine, start

OUT = ROOT / "bench" / "out" / "ab"


def extract(rev: str) -> Path:
    """The revision's `gateway/` package in a directory of its own."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    where = OUT / sha
    if not (where / "gateway").is_dir():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", sha, "gateway"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def start_from(code: Path, port: int, upstream_url: str, name: str) -> subprocess.Popen[bytes]:
    """`python -m gateway serve` with the package under `code` (`bench.common.start_gateway`'s
    settings), waited for."""
    data_dir = OUT / "data" / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "OPENAI_API_BASE_URL": upstream_url,
        "GATEWAY_DEMO_MODEL": "false",
        "WEBUI_SECRET_KEY": BENCH_SECRET,
        "DATA_DIR": str(data_dir),
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_MAX_REPLIES_PER_USER": "",
        "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
        "GATEWAY_MAX_FOLLOWERS_PER_USER": "100000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=code,  # `-m` puts the working directory first on sys.path
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the gateway from {code} did not come up")


def load(
    flavour: str,
    url: str,
    pid: int,
    streams: int,
    rounds: int,
    ids: Any = None,
    deltas: int = bench_sse.DELTAS,
) -> dict[str, float]:
    """One load on one gateway: {"cpu_us_per_chunk", "ttft_p50_ms"} (for Socket.IO the
    CPU per event and the gap p99 between events).  `ids`: the side's
    `bench_flavours.Identities`, for its flavours."""
    base = url.removesuffix("/v1/chat/completions")
    if flavour == "socketio":
        from bench import bench_socketio

        row = asyncio.run(bench_socketio.run(base, pid, streams, rounds, "bench"))
        return {"cpu_us_per_chunk": row["cpu_us_per_event"], "ttft_p50_ms": row["gap_p99_ms"]}
    if flavour in bench_flavours.FLAVOURS:
        plan = bench_flavours.Plan(
            deltas=deltas,
            delay_s=bench_sse.DELAY_S,
            streams=streams,
            rounds_one=rounds,
            rounds_many=rounds,
        )
        servers = bench_flavours.Servers(
            upstream="", relay="", gateway=base, relay_pid=0, gateway_pid=pid
        )
        found = asyncio.run(
            bench_flavours.run_path(flavour, "gateway", streams, plan, servers, ids)
        )
        if found.errors:
            raise RuntimeError(f"{len(found.errors)} stream(s) failed, first: {found.errors[0]}")
        report = found.report()
        return {
            "cpu_us_per_chunk": report["cpu_us_per_chunk"],
            "ttft_p50_ms": statistics.median(report["ttft_ms"]),
        }
    return asyncio.run(bench_sse.load(url, streams, rounds, pid, bench_auth()))


def measure(
    before: str,
    streams: int,
    pairs: int,
    rounds: int = 1,
    flavour: str = "openai",
    deltas: int = bench_sse.DELTAS,
) -> dict[str, Any]:
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    sides = {"before": extract(before), "after": ROOT}
    procs = [
        start(
            [
                "-m",
                "bench.servers",
                "upstream",
                str(up_port),
                str(deltas),
                str(bench_sse.DELAY_S),
            ],
            health=f"{upstream_url}/models",
        )
    ]
    rows: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    try:
        targets = {}
        ids = {}
        for side, code in sides.items():
            port = free_port()
            proc = start_from(code, port, upstream_url, side)
            procs.append(proc)
            targets[side] = (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid)
            ids[side] = bench_flavours.Identities(f"http://127.0.0.1:{port}")
        for side, (url, pid) in targets.items():  # warm-up: connections, the users
            load(flavour, url, pid, streams, 1, ids[side], deltas)
        for pair in range(pairs):
            order = ("before", "after") if pair % 2 == 0 else ("after", "before")
            for side in order:
                url, pid = targets[side]
                rows[side].append(load(flavour, url, pid, streams, rounds, ids[side], deltas))
            print(
                f"pair {pair + 1}/{pairs}: before {rows['before'][-1]['cpu_us_per_chunk']:.1f}"
                f" µs/chunk, after {rows['after'][-1]['cpu_us_per_chunk']:.1f}",
                file=sys.stderr,
            )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    ratios = [
        a["cpu_us_per_chunk"] / b["cpu_us_per_chunk"]
        for a, b in zip(rows["after"], rows["before"], strict=True)
    ]
    return {
        "machine": machine(),
        "before": before,
        "flavour": flavour,
        "streams": streams,
        "deltas": deltas,
        "pairs": pairs,
        "cpu_us_per_chunk": {
            side: statistics.median(r["cpu_us_per_chunk"] for r in found)
            for side, found in rows.items()
        },
        "ttft_p50_ms": {
            side: statistics.median(r["ttft_p50_ms"] for r in found) for side, found in rows.items()
        },
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument(
        "--deltas",
        type=int,
        default=bench_sse.DELTAS,
        help=f"a reply's length (default {bench_sse.DELTAS}); 1: the CPU per reply",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="loads per side in a pair (short replies need more: the CPU clock ticks every 10 ms)",
    )
    parser.add_argument(
        "--flavour",
        choices=["openai", "socketio", *bench_flavours.FLAVOURS],
        default="openai",
        help="openai: bench_sse's load; socketio: the web app's turn; the others: "
        "bench_flavours' client of that flavour",
    )
    args = parser.parse_args()
    found = measure(
        args.before,
        args.streams,
        args.pairs,
        args.rounds,
        flavour=args.flavour,
        deltas=args.deltas,
    )
    cpu, ttft = found["cpu_us_per_chunk"], found["ttft_p50_ms"]
    what = {"openai": "OpenAI SSE streams", "socketio": "Socket.IO web-app turns"}.get(
        found["flavour"], f"{found['flavour']} streams"
    )
    print(
        f"{found['machine']}; {found['streams']} {what} of {found['deltas']} deltas, "
        f"{found['pairs']} pairs"
    )
    print(f"| | before ({found['before']}) | after (working tree) |")
    print("|---|---|---|")
    print(f"| CPU µs per chunk, median | {cpu['before']:.1f} | {cpu['after']:.1f} |")
    second = "gap between events p99" if found["flavour"] == "socketio" else "TTFT p50"
    print(f"| {second} ms, median | {ttft['before']:.1f} | {ttft['after']:.1f} |")
    print(
        f"after ÷ before, CPU per chunk: ×{found['ratio_median']:.3f}"
        f" (pairs ×{found['ratio_min']:.3f}–×{found['ratio_max']:.3f})"
    )


if __name__ == "__main__":
    main()
