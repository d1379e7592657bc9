"""A model server's request body written: `json` (aiohttp's `json=`, what the
gateway used) against `jsonwire.body` (orjson, `json` for what it refuses).

    python -m bench.bench_body [--rounds 7] [--json]

A stored chat's turn sends the chat's whole conversation to the model server,
and the body is written in one call on the event loop: while it is written, no
other reply on the replica moves.  Bodies of a conversation of 1, 20, 200 and
2,000 messages (each about 1 KB of text, some of it not ASCII, as a chat's
messages are) are written both ways, alternating, best of ROUNDS runs of a loop
long enough to take about 0.2 s; reported per body: its size, each writer's
time per write, the ratio (orjson ÷ json).  The time per write is the loop's
stall for that turn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import machine
from gateway import jsonwire

SIZES = (1, 20, 200, 2_000)
TEXT = "Grüße: a message of some length, with words and numbers 1, 2, 3 and a ✓. " * 13


def body_of(messages: int) -> dict[str, Any]:
    """A turn's body as the gateway sends it (`upstream/openai.py`)."""
    return {
        "temperature": 0.7,
        "model": "llama3",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {TEXT}"}
            for i in range(messages)
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def per_write(write: Callable[[], bytes]) -> float:
    """Seconds a write, from a loop of about 0.2 s."""
    write()
    n, took = 1, 0.0
    while True:
        began = time.perf_counter()
        for _ in range(n):
            write()
        took = time.perf_counter() - began
        if took >= 0.2:
            return took / n
        n *= 2


def measure(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for messages in SIZES:
        body = body_of(messages)

        def old(body: dict[str, Any] = body) -> bytes:
            return json.dumps(body).encode()

        def new(body: dict[str, Any] = body) -> bytes:
            return jsonwire.body(body)

        assert json.loads(old()) == json.loads(new())
        olds, news = [], []
        for _ in range(rounds):
            olds.append(per_write(old))
            news.append(per_write(new))
        rows.append(
            {
                "messages": messages,
                "bytes": len(new()),
                "json_us": min(olds) * 1e6,
                "orjson_us": min(news) * 1e6,
                "ratio": min(news) / min(olds),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_body", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.rounds)
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return 0
    print(f"# {machine()}")
    print("| messages | body | json | jsonwire.body | ÷ |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['messages']:,} | {row['bytes'] / 1024:,.1f} KB | {row['json_us']:,.1f} µs"
            f" | {row['orjson_us']:,.1f} µs | ×{row['ratio']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
