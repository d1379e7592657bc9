"""OpenAI SSE flavour: added time-to-first-token and CPU per delivered chunk.

    python -m bench.bench_sse [--streams 1,200] [--rounds 3]

A paced upstream streams 64 deltas 20 ms apart.  The same load runs three
ways in one run: straight to the upstream (TTFT baseline), through a bare
aiohttp relay (CPU baseline), and through the gateway.  Reported:

* added TTFT = gateway p50/p99 − direct p50/p99 (ms);
* CPU per chunk = server process CPU seconds / chunks delivered (µs), and the
  gateway's ratio to the relay's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from bench.common import (
    bench_auth,
    cpu_seconds,
    free_port,
    machine,
    percentile,
    start,
    start_gateway,
)

DELTAS, DELAY_S = 64, 0.02
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, int]:
    began = time.perf_counter()
    ttft = float("nan")
    chunks = 0
    async with session.post(url, json=BODY, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content"' in line and b'"content":""' not in line:
                if chunks == 0:
                    ttft = time.perf_counter() - began
                chunks += 1
    return ttft, chunks


async def load(
    url: str, streams: int, rounds: int, pid: int | None, headers: dict[str, str]
) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one_stream(session, url, headers)  # warm up connections and caches
        ttfts: list[float] = []
        chunks = 0
        cpu_before = cpu_seconds(pid) if pid else 0.0
        for _ in range(rounds):
            results = await asyncio.gather(
                *(one_stream(session, url, headers) for _ in range(streams))
            )
            ttfts += [r[0] for r in results]
            chunks += sum(r[1] for r in results)
        cpu = (cpu_seconds(pid) - cpu_before) if pid else float("nan")
    return {
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000,
        "chunks": chunks,
        "cpu_us_per_chunk": cpu / chunks * 1e6 if chunks else float("nan"),
    }


PATHS = ("direct", "relay", "gateway")


def rounds_for(streams: int, rounds: int) -> int:
    """A single stream gives one sample a round: take more rounds."""
    return rounds if streams > 1 else max(rounds, 30)


def measure(
    levels: Sequence[int] = (1, 200),
    rounds: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Each level of concurrency through the three paths, in one run:
    {"upstream": {"deltas", "delay_ms"}, "levels": [...],
     "paths": {path: {"ttft_p50_ms": [...], "ttft_p99_ms": [...],
                      "cpu_us_per_chunk": [...], "chunks": [...]}}} (a value per level;
    the direct path's CPU is not measured: None)."""
    up_port, relay_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    found: dict[str, dict[str, list[Any]]] = {
        path: {"ttft_p50_ms": [], "ttft_p99_ms": [], "cpu_us_per_chunk": [], "chunks": []}
        for path in PATHS
    }
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), str(DELTAS), str(DELAY_S)],
            health=f"{upstream_url}/models",
        )
    ]
    try:
        relay = start(["-m", "bench.servers", "relay", str(relay_port), upstream_url])
        procs.append(relay)
        gateway = start_gateway(gw_port, upstream_url)
        procs.append(gateway)
        targets = {
            "direct": (f"{upstream_url}/chat/completions", None, {}),
            "relay": (f"http://127.0.0.1:{relay_port}/v1/chat/completions", relay.pid, {}),
            "gateway": (
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                gateway.pid,
                bench_auth(),
            ),
        }
        for streams in levels:
            for path, (url, pid, headers) in targets.items():
                progress(f"OpenAI SSE, {streams} streams, {path}")
                row = asyncio.run(load(url, streams, rounds_for(streams, rounds), pid, headers))
                for key, values in found[path].items():
                    value = row[key]
                    values.append(None if key == "cpu_us_per_chunk" and pid is None else value)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    return {
        "upstream": {"deltas": DELTAS, "delay_ms": DELAY_S * 1000},
        "levels": list(levels),
        "paths": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="1,200")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    result = measure(levels, args.rounds)
    print(f"# OpenAI SSE bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    pace = f"{DELTAS} deltas, {DELAY_S * 1000:.0f} ms apart"
    print(f"# {pace}; {args.rounds} rounds per row (30 for 1 stream)\n")
    print("| streams | path | TTFT p50 ms | TTFT p99 ms | CPU µs/chunk | chunks |")
    print("|---|---|---|---|---|---|")
    paths = result["paths"]
    for i, streams in enumerate(levels):
        for name in PATHS:
            row = {key: values[i] for key, values in paths[name].items()}
            cpu = "–" if row["cpu_us_per_chunk"] is None else f"{row['cpu_us_per_chunk']:.1f}"
            print(
                f"| {streams} | {name} | {row['ttft_p50_ms']:.2f} | {row['ttft_p99_ms']:.2f} | "
                f"{cpu} | {row['chunks']:.0f} |"
            )
        added50 = paths["gateway"]["ttft_p50_ms"][i] - paths["direct"]["ttft_p50_ms"][i]
        added99 = paths["gateway"]["ttft_p99_ms"][i] - paths["direct"]["ttft_p99_ms"][i]
        ratio = paths["gateway"]["cpu_us_per_chunk"][i] / paths["relay"]["cpu_us_per_chunk"][i]
        summary = f"+{added50:.2f} | +{added99:.2f} | ×{ratio:.2f}"
        print(f"| {streams} | **gateway − direct; gateway ÷ relay** | {summary} | |")


if __name__ == "__main__":
    main()
