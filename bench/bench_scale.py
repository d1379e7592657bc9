"""Scale-out: Socket.IO delivery with Redis on, against the in-process bus.

    python -m bench.bench_scale [--streams 200] [--rounds 3]

The load of `bench.bench_socketio` (200 sockets, one user each, a reply of 64
deltas 20 ms apart per round, from the in-process demo model), run three ways
in one run:

* one gateway, in-process bus (the baseline);
* one gateway with Redis on: every event also goes out on Redis (no other
  replica listens; the common case behind a sticky balancer);
* two gateways on Redis, the sockets on A and every reply run on B: each event
  crosses Redis.

Reported: CPU µs per delivered event (the gateways' processes; the Redis
server's own CPU beside it), gap p50/p99 between a stream's events, and the
ratio to the in-process row (target ≤ 2; Open WebUI's Redis path costs 3–10×
its local one).  Redis must run on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid

from bench.bench_socketio import DELAY_S, SECRET, run
from bench.common import cpu_seconds, free_port, machine, start


def redis_pid() -> int:
    info = subprocess.run(
        ["redis-cli", "-p", "6379", "info", "server"], capture_output=True, text=True, check=True
    ).stdout
    return int(
        next(line for line in info.splitlines() if line.startswith("process_id:")).split(":")[1]
    )


def gateway(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start(
        ["-m", "gateway", "serve", "--port", str(port)],
        env={
            "GATEWAY_DEMO_TOKEN_DELAY_S": str(DELAY_S),
            "WEBUI_SECRET_KEY": SECRET,
            "GATEWAY_LOG_LEVEL": "WARNING",
            **env,
        },
        health=f"http://127.0.0.1:{port}/health",
    )
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    shared_db = f"sqlite:///bench/out/scale-{tag}/shared.db"
    redis_env = {"WEBSOCKET_MANAGER": "redis", "GATEWAY_REDIS_KEY_PREFIX": f"bench-{tag}:"}
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[str, dict[str, float]] = {}
    rpid = redis_pid()
    try:
        local, local_url = gateway({"DATA_DIR": f"bench/out/scale-{tag}/local"})
        procs.append(local)
        rows["in-process bus, 1 gateway"] = asyncio.run(
            run(local_url, local.pid, args.streams, args.rounds, "gateway-demo")
        )
        one, one_url = gateway({"DATA_DIR": f"bench/out/scale-{tag}/one", **redis_env})
        procs.append(one)
        before = cpu_seconds(rpid)
        rows["Redis on, 1 gateway"] = asyncio.run(
            run(one_url, one.pid, args.streams, args.rounds, "gateway-demo")
        )
        rows["Redis on, 1 gateway"]["redis_us"] = (
            (cpu_seconds(rpid) - before) / rows["Redis on, 1 gateway"]["events"] * 1e6
        )
        # Two replicas sharing a database (one SQLite file: same machine) and Redis.
        both = {
            "DATABASE_URL": shared_db,
            **redis_env,
            "GATEWAY_REDIS_KEY_PREFIX": f"bench2-{tag}:",
        }
        a, a_url = gateway({"DATA_DIR": f"bench/out/scale-{tag}/a", **both})
        b, b_url = gateway({"DATA_DIR": f"bench/out/scale-{tag}/b", **both})
        procs += [a, b]
        before = cpu_seconds(rpid)
        name = "Redis on, sockets on A, replies on B"
        rows[name] = asyncio.run(
            run(a_url, [a.pid, b.pid], args.streams, args.rounds, "gateway-demo", post_url=b_url)
        )
        rows[name]["redis_us"] = (cpu_seconds(rpid) - before) / rows[name]["events"] * 1e6
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    print(f"# Scale-out bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# {args.streams} Socket.IO streams × 64 deltas {DELAY_S * 1000:.0f} ms apart, "
        f"{args.rounds} rounds per row; CPU = the gateway processes (Redis server beside)\n"
    )
    print(
        "| bus | events | CPU µs/event | Redis µs/event | gap p50 ms | gap p99 ms | ÷ in-process |"
    )
    print("|---|---|---|---|---|---|---|")
    base = rows["in-process bus, 1 gateway"]["cpu_us_per_event"]
    for label, row in rows.items():
        redis_us = f"{row['redis_us']:.1f}" if "redis_us" in row else "–"
        print(
            f"| {label} | {row['events']:.0f} | {row['cpu_us_per_event']:.1f} | {redis_us} | "
            f"{row['gap_p50_ms']:.1f} | {row['gap_p99_ms']:.1f} | "
            f"×{row['cpu_us_per_event'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
