"""What one reply at a time into a message costs across replicas: a claim's round trip
to Redis and the gateway's own CPU for it (`gateway/bus/claims.py`).

    python -m bench.bench_claim [--claims 2000] [--runs 3] [--url redis://127.0.0.1:6379/0]

A `RedisReplicas` of its own (a key prefix of its own, removed afterwards) against
the given Redis: CLAIMS claims one after the other, each of a new message, each let
go at once (the let-go is queued, as at a reply's end; the queue is drained every
100 claims).  Reported per run: the claim's round trip p50 and p99 (wall clock, from
the call to its answer) and this process's CPU per claim with its let-go
(`time.process_time`).  Only a replica on Redis pays this: without it a claim is a
set lookup.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import uvloop

from gateway.bus.replicas import RedisReplicas


async def one_run(url: str, claims: int) -> dict[str, float]:
    prefix = f"bench-claim-{uuid.uuid4().hex[:8]}:"
    replicas = RedisReplicas(url, prefix)

    async def nothing(*_: Any) -> None:
        return None

    await replicas.start(nothing, nothing)
    took, cpu = [], []
    try:
        for index in range(claims):
            began, began_cpu = time.perf_counter(), time.process_time()
            held = await replicas.claim("bench", [f"m{index}"])
            took.append(time.perf_counter() - began)
            replicas.unclaim("bench", [f"m{index}"])
            cpu.append(time.process_time() - began_cpu)
            assert held is None, "a message of this run held elsewhere"
            if index % 100 == 99:
                await replicas._sender.drained(2)
        await replicas._sender.drained(2)
    finally:
        keys = [key async for key in replicas._redis.scan_iter(match=prefix + "*")]
        if keys:
            await replicas._redis.delete(*keys)
        await replicas.close()
    took.sort()
    return {
        "p50_ms": statistics.median(took) * 1e3,
        "p99_ms": took[int(len(took) * 0.99)] * 1e3,
        "cpu_us": sum(cpu) / len(cpu) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        result = uvloop.run(one_run(args.url, args.claims))
        print(
            f"run {run}: claim round trip p50 {result['p50_ms']:.3f} ms, "
            f"p99 {result['p99_ms']:.3f} ms; CPU per claim with its let-go "
            f"{result['cpu_us']:.0f} µs"
        )


if __name__ == "__main__":
    main()
