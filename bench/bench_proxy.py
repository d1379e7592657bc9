"""What the shipped proxy configs add to a streamed reply: nginx and Caddy vs direct.

    python -m bench.bench_proxy [--streams 1,100] [--rounds 3]

A paced upstream streams 64 deltas 20 ms apart (1.28 s a reply) to one gateway;
the same OpenAI SSE load then goes to the gateway directly (the baseline, in the
same run), through nginx with `nginx/gateway.conf` and through Caddy with
`caddy/Caddyfile` (both pointed at that one gateway, as both of their replicas).
Reported per path: time to first token and whole-reply time, p50/p99, and the
added milliseconds against direct.  A proxy that buffered would show a first
token about as late as the whole reply.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.bench_sse import BODY, DELAY_S, DELTAS
from bench.common import bench_auth, free_port, machine, percentile, start, start_gateway
from tests.proxy.runners import Proxy, start_caddy, start_nginx


async def one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, float]:
    """(time to the first content chunk, time to [DONE]) in seconds."""
    began = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=BODY, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            content = b'"content":"' in line and b'"content":""' not in line
            if first is None and line.startswith(b"data: {") and content:
                first = time.perf_counter() - began
            if line.startswith(b"data: [DONE]"):
                break
    assert first is not None, "no content chunk"
    return first, time.perf_counter() - began


async def load(url: str, streams: int, rounds: int, headers: dict[str, str]) -> list[float]:
    """[ttft p50, ttft p99, whole p50, whole p99] in ms."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await one_stream(session, url, headers)  # warm up connections and caches
        firsts: list[float] = []
        wholes: list[float] = []
        for _ in range(rounds):
            results = await asyncio.gather(
                *(one_stream(session, url, headers) for _ in range(streams))
            )
            firsts += [r[0] for r in results]
            wholes += [r[1] for r in results]
    return [percentile(values, q) * 1000 for values in (firsts, wholes) for q in (50, 99)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="1,100")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), str(DELTAS), str(DELAY_S)],
            health=f"{upstream_url}/models",
        )
    ]
    proxies: list[Proxy] = []
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    try:
        procs.append(start_gateway(gw_port, upstream_url))
        proxies.append(start_nginx(work / "nginx", "nginx/gateway.conf", [gw_port, gw_port]))
        proxies.append(start_caddy(work / "caddy", "Caddyfile", [gw_port, gw_port]))
        paths = {"direct": f"http://127.0.0.1:{gw_port}"}
        paths |= {proxy.name.split()[0]: proxy.origin for proxy in proxies}
        auth = bench_auth()

        print(f"# Proxy bench — {time.strftime('%Y-%m-%d')} — {machine()}")
        print(f"# {DELTAS} deltas {DELAY_S * 1000:.0f} ms apart; {args.rounds} rounds a row\n")
        print("| streams | path | TTFT p50 ms | TTFT p99 ms | reply p50 ms | reply p99 ms |")
        print("|---|---|---|---|---|---|")
        for streams in [int(s) for s in args.streams.split(",")]:
            rounds = args.rounds if streams > 1 else max(args.rounds, 30)
            rows = {
                name: asyncio.run(load(f"{base}/v1/chat/completions", streams, rounds, auth))
                for name, base in paths.items()
            }
            for name, row in rows.items():
                print(f"| {streams} | {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
            for name, row in rows.items():
                if name != "direct":
                    added = [v - base for v, base in zip(row, rows["direct"], strict=True)]
                    cells = " | ".join(f"{v:+.1f}" for v in added)
                    print(f"| {streams} | **{name} − direct** | {cells} |")
    finally:
        for proxy in proxies:
            proxy.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
