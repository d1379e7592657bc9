"""permessage-deflate on WebSockets: the memory each connection costs, and the bytes
it saves on a reply, with compression on vs off in one run.

    python -m bench.bench_deflate [--connections 300] [--cycles 4]

Two gateways side by side (the demo model, their own data dirs), one with
`GATEWAY_WEBSOCKET_COMPRESSION=true` and one with the default (off).  Against
each, clients that offer permessage-deflate as browsers do (`websockets`,
which offers it by default):

* **memory**: CONNECTIONS Nadoo sockets and as many Socket.IO websockets
  opened, held, then closed, CYCLES times; the gateway's RSS (from /proc) is
  read before the first cycle, with the sockets open, and after each cycle.
  Reported: KB per held connection, and the RSS the gateway keeps after the
  churn (what it does not give back);
* **bytes on the wire for a reply**: one demo reply over Nadoo, its frames as
  sent (UTF-8) against the same frames through one zlib context with
  context takeover and a sync flush per frame, as permessage-deflate does
  (`-15` window bits, the 4-byte tail dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from pathlib import Path

import jwt
import websockets

from bench.common import BENCH_SECRET, free_port, machine, start

ON, OFF = "on", "off"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def token(user: str) -> str:
    return jwt.encode({"id": user}, BENCH_SECRET, algorithm="HS256")


async def open_many(port: int, count: int) -> list[websockets.ClientConnection]:
    """`count` Nadoo sockets and `count` Socket.IO websockets, each past its first frame."""
    base = f"ws://127.0.0.1:{port}"
    sockets: list[websockets.ClientConnection] = []
    for n in range(count):
        for path in (f"/ws/chat/bench-{n}?token={token(f'u{n}')}", "/ws/socket.io/?EIO=4&transport=websocket"):
            ws = await websockets.connect(base + path, max_queue=4)
            await ws.recv()
            sockets.append(ws)
    return sockets


async def reply_frames(port: int) -> list[str]:
    url = f"ws://127.0.0.1:{port}/ws/chat/bench-reply?token={token('replier')}"
    frames: list[str] = []
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "chat", "content": "How long is a piece of string?"}))
        while True:
            frame = str(await ws.recv())
            frames.append(frame)
            if json.loads(frame)["type"] == "response_end":
                return frames


def deflated_size(frames: list[str]) -> int:
    """What permessage-deflate (context takeover, sync flush per message) would send."""
    context = zlib.compressobj(wbits=-15)
    total = 0
    for frame in frames:
        block = context.compress(frame.encode()) + context.flush(zlib.Z_SYNC_FLUSH)
        total += len(block) - 4  # the 00 00 ff ff tail is not sent
    return total


async def measure(port: int, pid: int, connections: int, cycles: int) -> dict[str, float]:
    before = rss_kb(pid)
    held: list[float] = []
    after: list[int] = []
    for _ in range(cycles):
        start_kb = rss_kb(pid)
        sockets = await open_many(port, connections)
        held.append((rss_kb(pid) - start_kb) / len(sockets))
        await asyncio.gather(*(ws.close() for ws in sockets))
        await asyncio.sleep(1.0)  # the server side closes, then frees
        after.append(rss_kb(pid))
    return {
        "kb_per_connection": sorted(held)[len(held) // 2],
        "rss_before_mb": before / 1024,
        "rss_after_mb": after[-1] / 1024,
        "kept_mb": (after[-1] - before) / 1024,
    }


async def run(connections: int, cycles: int) -> None:
    gateways = {}
    for name in (OFF, ON):
        port = free_port()
        env = {
            "WEBUI_SECRET_KEY": BENCH_SECRET,
            "DATA_DIR": f"bench/out/deflate-{name}",
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_DEMO_TOKEN_DELAY_S": "0.001",
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
            "GATEWAY_WEBSOCKET_COMPRESSION": "true" if name == ON else "false",
        }
        args = ["-m", "gateway", "serve", "--port", str(port)]
        gateways[name] = (port, start(args, env, health=f"http://127.0.0.1:{port}/health"))
    try:
        results = {}
        for name, (port, proc) in gateways.items():
            began = time.monotonic()
            figures = await measure(port, proc.pid, connections, cycles)
            frames = await reply_frames(port)
            raw = sum(len(frame.encode()) for frame in frames)
            figures.update(raw_bytes=raw, deflated_bytes=deflated_size(frames), frames=len(frames))
            results[name] = figures
            print(f"compression {name}: measured in {time.monotonic() - began:.0f} s", flush=True)
    finally:
        for _, proc in gateways.values():
            proc.terminate()
            proc.wait(10)
    print(f"\n# permessage-deflate bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(f"{connections} Nadoo + {connections} Socket.IO websockets per cycle, {cycles} cycles\n")
    print("| compression | KB per held connection | RSS before → after churn | kept |")
    print("|---|---|---|---|")
    for name in (OFF, ON):
        r = results[name]
        print(
            f"| {name} | {r['kb_per_connection']:.1f} | {r['rss_before_mb']:.0f} → "
            f"{r['rss_after_mb']:.0f} MB | {r['kept_mb']:+.0f} MB |"
        )
    on, off = results[ON], results[OFF]
    print(
        f"\nper connection: on ÷ off = ×{on['kb_per_connection'] / max(off['kb_per_connection'], 0.1):.1f}"
    )
    print(
        f"a {off['frames']:.0f}-frame demo reply: {off['raw_bytes']:.0f} bytes as sent, "
        f"{off['deflated_bytes']:.0f} deflated (÷{off['raw_bytes'] / off['deflated_bytes']:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.connections, args.cycles))


if __name__ == "__main__":
    main()
