"""A model server's request body written: `json` (aiohttp's `json=`, what the
gateway used) against `jsonwire.body` (orjson, `json` for what it refuses).

    python -m bench.bench_body [--rounds 7] [--json]
    python -m bench.bench_body --turns 30 [--messages 2000] [--together 1] [--json]

A stored chat's turn sends the chat's whole conversation to the model server,
and the body is written in one call on the event loop: while it is written, no
other reply on the replica moves.  Bodies of a conversation of 1, 20, 200 and
2,000 messages (each about 1 KB of text, some of it not ASCII, as a chat's
messages are) are written both ways, alternating, best of ROUNDS runs of a loop
long enough to take about 0.2 s; reported per body: its size, each writer's
time per write, the ratio (orjson ÷ json).  The time per write is the loop's
stall for that turn.

With `--turns`, what a chat's length costs a stored turn: one gateway (SQLite)
in front of a paced upstream (4 deltas 20 ms apart), a chat of 2 messages and
one of MESSAGES (made with `POST /api/v1/chats/new`, each message about 250
bytes), and one Nadoo socket that asks a question in each, alternating, TURNS
times each: the time to first token (p50, min) of each chat and the
difference, which is what the long chat's turn does before the model server is
asked (its read, its tree, its conversation, its body).  Meanwhile a client
asks `GET /health` again and again; its longest answer during each turn's wait
for the first token is that turn's stall of the event loop (p50 and max per
chat): what every other reply on the replica waited.

With `--together K`, K sockets each ask in a chat of their own at once (K chats
of each length): the stall is the longest `/health` answer from the first
question to the last first token, and every turn's TTFT counts.  Long chats'
turns run in threads beside the loop; how many at once is what this shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import websockets

from bench.common import bench_auth, free_port, machine, start, start_gateway, stop
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


def _chat(messages: int) -> dict[str, Any]:
    """A linear chat of `messages` as the web app makes one."""
    history: dict[str, dict[str, Any]] = {}
    parent: str | None = None
    for i in range(messages):
        mid = str(uuid.uuid4())
        history[mid] = {
            "id": mid,
            "parentId": parent,
            "childrenIds": [],
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{i}: {TEXT[:240]}",
            "timestamp": 1_700_000_000 + i,
        }
        if parent is not None:
            history[parent]["childrenIds"].append(mid)
        parent = mid
    return {"title": f"{messages} messages", "history": {"messages": history, "currentId": parent}}


async def _probe(base: str, probes: list[tuple[float, float]]) -> None:
    """`GET /health`, one after the other until cancelled: (sent, answered) of each.
    Its answer waits for nothing but the event loop, so its time is the loop's stall."""
    async with aiohttp.ClientSession() as http:
        while True:
            sent = time.perf_counter()
            async with http.get(f"{base}/health") as resp:
                await resp.read()
            probes.append((sent, time.perf_counter()))
            await asyncio.sleep(0.001)


def _stall(probes: list[tuple[float, float]], began: float, ended: float) -> float:
    """The longest probe (ms) that overlapped the window."""
    return max(
        (
            (answered - sent) * 1000
            for sent, answered in probes
            if sent < ended and answered > began
        ),
        default=0.0,
    )


async def _turns(
    port: int, sizes: tuple[int, ...], turns: int, together: int = 1
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Each chat's TTFTs, and the longest `/health` answer during each turn's wait for
    its first token (the loop's stall)."""
    base, auth = f"http://127.0.0.1:{port}", bench_auth()
    chats: dict[int, list[str]] = {size: [] for size in sizes}
    async with aiohttp.ClientSession() as http:
        for size in sizes:
            for _ in range(together):
                async with http.post(
                    f"{base}/api/v1/chats/new", json={"chat": _chat(size)}, headers=auth
                ) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"a chat of {size}: {resp.status} {await resp.text()}")
                    chats[size].append((await resp.json())["id"])
    token = auth["Authorization"].split()[1]
    ttft: dict[int, list[float]] = {size: [] for size in sizes}
    stalls: dict[int, list[float]] = {size: [] for size in sizes}
    probes: list[tuple[float, float]] = []
    prober = asyncio.ensure_future(_probe(base, probes))
    # A workspace each: a Nadoo socket gets every reply of its workspace.
    url = f"ws://127.0.0.1:{port}/ws/chat/bench-{{}}?token={token}"
    sockets = [await websockets.connect(url.format(i)) for i in range(together)]
    try:
        for ws in sockets:
            await ws.recv()  # connected
        for turn in range(turns):
            for size in sizes if turn % 2 == 0 else sizes[::-1]:
                firsts = await asyncio.gather(
                    *(_turn(ws, chat, size) for ws, chat in zip(sockets, chats[size], strict=True))
                )
                if turn:  # the first of each is a warm-up
                    ttft[size] += [(answered - began) * 1000 for began, answered in firsts]
                    await asyncio.sleep(0.01)  # the probe that overlapped them is back
                    began = min(began for began, _ in firsts)
                    stalls[size].append(_stall(probes, began, max(a for _, a in firsts)))
    finally:
        prober.cancel()
        for ws in sockets:
            await ws.close()
    return ttft, stalls


async def _turn(ws: websockets.ClientConnection, chat_id: str, size: int) -> tuple[float, float]:
    """A question asked in the chat: when, and when its first token came."""
    began, first = time.perf_counter(), None
    await ws.send(json.dumps({"type": "chat", "content": "go", "chat_id": chat_id}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "text-delta" and first is None:
            first = time.perf_counter()
        if frame["type"] == "error":
            raise RuntimeError(f"a turn in the chat of {size}: {frame}")
        if frame["type"] == "response_end":
            break
    assert first is not None
    return began, first


def measure_turns(messages: int, turns: int, together: int = 1) -> list[dict[str, Any]]:
    up_port, port = free_port(), free_port()
    upstream = start(["-m", "bench.servers", "upstream", str(up_port), "4", "0.02"])
    try:
        gateway = start_gateway(
            port,
            f"http://127.0.0.1:{up_port}/v1",
            # A chat past 20,000 messages is made in one request.
            env={
                "DATA_DIR": f"bench/out/body-{port}",
                "GATEWAY_MAX_REQUEST_BODY_BYTES": "67108864",
            },
        )
        try:
            found, stalls = asyncio.run(_turns(port, (2, messages), turns + 1, together))
        finally:
            stop(gateway)
    finally:
        stop(upstream)
    return [
        {
            "messages": size,
            "ttft_p50_ms": statistics.median(values),
            "ttft_min_ms": min(values),
            "stall_p50_ms": statistics.median(stalls[size]),
            "stall_max_ms": max(stalls[size]),
        }
        for size, values in found.items()
    ]


def _table(head: list[str], lines: list[str]) -> None:
    print(f"# {machine()}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for line in lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_body", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--turns", type=int, help="a stored turn's TTFT, short and long chat")
    parser.add_argument("--messages", type=int, default=2_000, help="the long chat's length")
    parser.add_argument("--together", type=int, default=1, help="sockets that ask at once")
    args = parser.parse_args(argv)
    if args.turns:
        rows = measure_turns(args.messages, args.turns, args.together)
    else:
        rows = measure(args.rounds)
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    elif args.turns:
        _table(
            ["chat", "TTFT p50", "TTFT min", "loop stall p50", "loop stall max"],
            [
                f"| {row['messages']:,} messages | {row['ttft_p50_ms']:.1f} ms"
                f" | {row['ttft_min_ms']:.1f} ms | {row['stall_p50_ms']:.1f} ms"
                f" | {row['stall_max_ms']:.1f} ms |"
                for row in rows
            ],
        )
        short, long = rows
        print(f"the long chat's turn: +{long['ttft_p50_ms'] - short['ttft_p50_ms']:.1f} ms (p50)")
    else:
        _table(
            ["messages", "body", "json", "jsonwire.body", "÷"],
            [
                f"| {row['messages']:,} | {row['bytes'] / 1024:,.1f} KB | {row['json_us']:,.1f} µs"
                f" | {row['orjson_us']:,.1f} µs | ×{row['ratio']:.3f} |"
                for row in rows
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
