"""The garbage collector's pauses in the gateway's loop, with and without start-up's
objects frozen out of it (`gc.freeze()` in `gateway/server.py`).

    python -m bench.bench_gc [--streams 100] [--rounds 6] [--pairs 2]
    python -m bench.bench_gc serve PORT LOG [--no-freeze]   (the gateway, run by the bench)

A paced upstream (32 deltas 20 ms apart) and two gateways in front of it, one
as shipped and one whose `gc.freeze()` is made a no-op (`--no-freeze`); each
records every collection it makes (`gc.callbacks`: generation, duration,
objects collected) into a log.  The web app's turn (bench_flavours' Socket.IO
client: a new chat per turn, the reply on the socket) runs STREAMS at once,
ROUNDS times, on one gateway then the other, PAIRS times alternating.  After
each load, the gateway's heap holds what four flavours' worth of users, chats,
replies and traces leave behind, as a gateway that has served for a while does.

Reported per gateway, from the first load on (start-up's collections left
out): full (generation 2) collections, their duration p50 and max, and the
longest of any generation; the largest gap between two chunks of a
reply (a pause stalls every reply at once) over all rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BENCH_SECRET, ROOT, free_port, machine, start, stop

ARMS = ("frozen", "not frozen")


def serve(port: int, log: Path, freeze: bool) -> None:
    began: list[float] = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        took = (time.perf_counter() - began[0]) * 1000
        with log.open("a") as out:
            out.write(f"{info['generation']} {took:.3f} {info['collected']}\n")

    gc.callbacks.append(timed)
    if not freeze:
        gc.freeze = lambda: None  # the arm without it
    from gateway.cli import main

    sys.exit(main(["serve", "--port", str(port)]))


def _load(gateway: str, streams: int, rounds: int) -> float:
    """The largest gap between two chunks of a reply, ms, over the rounds."""
    from bench import bench_flavours as flavours

    plan = flavours.Plan(deltas=32, delay_s=0.02, streams=streams, rounds_one=1,
                         rounds_many=rounds)  # fmt: skip
    servers = flavours.Servers("", "", gateway, 0, 0)
    found = asyncio.run(
        flavours.run_path("socketio", "gateway", streams, plan, servers,
                          flavours.Identities(gateway))
    )  # fmt: skip
    return float(found.report()["max_gap_ms"])


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _pauses(log: Path, skip: int) -> dict[str, Any]:
    """The collections after the first `skip` (start-up's, its own `gc.collect()`)."""
    rows = [line.split() for line in _lines(log)[skip:]]
    full = [float(ms) for generation, ms, _ in rows if generation == "2"]
    every = [float(ms) for _, ms, _ in rows]
    return {
        "collections": len(rows),
        "full": len(full),
        "full_p50_ms": round(statistics.median(full), 2) if full else None,
        "full_max_ms": round(max(full), 2) if full else None,
        "any_max_ms": round(max(every), 2) if every else None,
    }


def measure(
    streams: int = 100,
    rounds: int = 6,
    pairs: int = 2,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    procs = [start(["-m", "bench.servers", "upstream", str(up_port), "32", "0.02"],
                   health=f"{upstream}/models")]  # fmt: skip
    logs, urls = {}, {}
    try:
        for arm in ARMS:
            port = free_port()
            logs[arm] = out / f"gc-{arm.replace(' ', '-')}.log"
            logs[arm].unlink(missing_ok=True)
            flags = ["--no-freeze"] if arm == "not frozen" else []
            procs.append(start(
                ["-m", "bench.bench_gc", "serve", str(port), str(logs[arm]), *flags],
                env={"OPENAI_API_BASE_URL": upstream, "GATEWAY_DEMO_MODEL": "false",
                     "WEBUI_SECRET_KEY": BENCH_SECRET, "GATEWAY_LOG_LEVEL": "WARNING",
                     "DATA_DIR": f"bench/out/gc-data-{arm.replace(' ', '-')}",
                     "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
                     "GATEWAY_MAX_REPLIES_PER_USER": ""},
                health=f"http://127.0.0.1:{port}/health",
            ))  # fmt: skip
            urls[arm] = f"http://127.0.0.1:{port}"
        started = {arm: len(_lines(logs[arm])) for arm in ARMS}
        gaps: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for pair in range(pairs):
            for arm in ARMS if pair % 2 == 0 else ARMS[::-1]:
                progress(f"pair {pair + 1}, {arm}")
                gaps[arm].append(_load(urls[arm], streams, rounds))
    finally:
        for proc in procs:
            stop(proc)
    return {
        "streams": streams,
        "rounds": rounds,
        "pairs": pairs,
        "arms": {
            arm: {**_pauses(logs[arm], started[arm]), "max_gap_ms": max(gaps[arm])}
            for arm in ARMS
        },
    }


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), Path(sys.argv[3]), freeze="--no-freeze" not in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    result = measure(args.streams, args.rounds, args.pairs,
                     lambda what: print(f"… {what}", file=sys.stderr))  # fmt: skip
    print(f"# GC pauses — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}\n")
    print(f"{result['streams']} web-app turns at once × {result['rounds']} rounds × "
          f"{result['pairs']} pairs per gateway\n")  # fmt: skip
    print("| gateway | collections | full ones | full p50 / max ms | longest of any ms "
          "| longest gap in a reply ms |\n|---|---|---|---|---|---|")  # fmt: skip
    for arm, row in result["arms"].items():
        print(f"| {arm} | {row['collections']} | {row['full']} | {row['full_p50_ms']} / "
              f"{row['full_max_ms']} | {row['any_max_ms']} | {row['max_gap_ms']:.1f} |")  # fmt: skip
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
