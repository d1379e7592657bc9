"""A model server's event that arrives in many small reads: what reading it costs.

    python -m bench.bench_trickle [--rounds 5] [--json]

One upstream SSE event of EVENT_BYTES (a tool call's arguments sent whole, as
Ollama and Gemini send them) fed to `ChunkDecoder` in reads of 4 KiB (the
baseline: a socket's usual read) and of 1,024, 256 and 64 bytes (a slow or
hostile server's writes, each its own read), best of ROUNDS; reported per read
size: the CPU time to read the event and its ratio to the baseline's.  A cost
that grows with the event's size times its number of reads (a copy, or a search
from the start, of everything buffered at each read) shows as a ratio that
grows as the reads shrink: ×60 at 64 bytes before the parser searched only
what was new (`bench/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.upstream.chunks import ChunkDecoder

EVENT_BYTES = 1_000_000
READS = (4096, 1024, 256, 64)


def event() -> bytes:
    delta = {"content": "x" * EVENT_BYTES}
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def read_cost(body: bytes, read: int) -> float:
    decoder = ChunkDecoder("bench", max_event_bytes=2 * len(body))
    started = time.process_time()
    chunks = 0
    for start in range(0, len(body), read):
        chunks += sum(1 for _ in decoder.feed(body[start : start + read]))
    spent = time.process_time() - started
    assert chunks == 1, chunks
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    body = event()
    best = {read: min(read_cost(body, read) for _ in range(args.rounds)) for read in READS}
    baseline = best[READS[0]]
    rows = [
        {"read_bytes": read, "cpu_ms": round(spent * 1000, 2), "ratio": round(spent / baseline, 1)}
        for read, spent in best.items()
    ]
    if args.json:
        print(json.dumps({"event_bytes": len(body), "rows": rows}))
        return
    print(f"one event of {len(body):,} bytes, best of {args.rounds}")
    print(f"{'read':>8} {'CPU ms':>9} {'÷ 4 KiB reads':>14}")
    for row in rows:
        print(f"{row['read_bytes']:>8,} {row['cpu_ms']:>9.2f} {row['ratio']:>13.1f}×")


if __name__ == "__main__":
    main()
