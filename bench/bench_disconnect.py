"""A client that leaves mid-reply: how soon the gateway closes its request to the
model server.

    python -m bench.bench_disconnect [--replies 30]

The paced upstream (`bench.servers upstream`, 400 deltas 20 ms apart: a reply
that outlasts the test) notes, on the machine's monotonic clock, when a
request lost its client: its handler is cancelled as the connection drops.
The client streams an OpenAI SSE reply from the gateway, reads five chunks,
notes the time and drops its connection; the figure is the time from that
drop to the upstream's note, per reply (target: under 50 ms).

Only the pure-API flavours stop their reply when the client goes: a stored
reply (the web app's Socket.IO turn, Nadoo, RAGFlow) runs on to the end and
is kept for the chat, so its upstream request is not closed, on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.common import bench_auth, free_port, machine, percentile, start, start_gateway

DELTAS, DELAY_S = 400, 0.02
READ_CHUNKS = 5


async def one(session: aiohttp.ClientSession, gateway: str, upstream: str) -> float:
    marker = f"closed:{uuid.uuid4().hex}"
    body = {"model": "bench", "messages": [{"role": "user", "content": marker}], "stream": True}
    resp = await session.post(f"{gateway}/v1/chat/completions", json=body, headers=bench_auth())
    seen = 0
    async for line in resp.content:
        seen += line.startswith(b"data: {")
        if seen == READ_CHUNKS:
            break
    dropped = time.monotonic()
    resp.close()  # drops the connection, mid-reply
    deadline = dropped + 5
    while time.monotonic() < deadline:
        async with session.get(f"{upstream}/bench/closed/{marker}") as answer:
            at = await answer.json()
        if at is not None:
            return float(at) - dropped
        await asyncio.sleep(0.005)
    raise RuntimeError("the upstream request was still open 5 s after the client left")


async def run(gateway: str, upstream: str, replies: int) -> list[float]:
    # No connection reuse: the dropped one is gone anyway, and each reply starts alike.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one(session, gateway, upstream)  # warm-up: the user, the pool
        return [await one(session, gateway, upstream) for _ in range(replies)]


def measure(replies: int = 30, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    base = f"http://127.0.0.1:{up_port}"
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), str(DELTAS), str(DELAY_S)],
            health=f"{base}/v1/models",
        )
    ]
    try:
        procs.append(start_gateway(gw_port, f"{base}/v1"))
        progress(f"client disconnect, {replies} OpenAI SSE replies")
        latencies = asyncio.run(run(f"http://127.0.0.1:{gw_port}", base, replies))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    ms = [latency * 1000 for latency in latencies]
    return {
        "replies": replies,
        "closed_p50_ms": percentile(ms, 50),
        "closed_p99_ms": percentile(ms, 99),
        "closed_max_ms": max(ms),
        "samples_ms": ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=30)
    args = parser.parse_args()
    found = measure(args.replies)
    print(machine())
    print(
        f"client gone → upstream request closed, {found['replies']} replies: "
        f"p50 {found['closed_p50_ms']:.1f} ms, p99 {found['closed_p99_ms']:.1f} ms, "
        f"max {found['closed_max_ms']:.1f} ms (target < 50 ms)"
    )


if __name__ == "__main__":
    main()
