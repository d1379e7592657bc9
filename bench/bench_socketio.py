"""Socket.IO flavour: CPU per delivered event and p99 inter-event gap.

    python -m bench.bench_socketio [--streams 200] [--rounds 3]

STREAMS python-socketio clients (websocket transport, one user each) each
receive one reply of 64 deltas 20 ms apart per round.  Three servers in one
run, with the same clients:

* emit loop  — python-socketio's own `AsyncServer.emit` in a loop
               (`bench.servers sio-emit`): the baseline;
* gateway, demo model — the gateway answering from its in-process paced model:
               the web app's turn (HTTP POST), chat + placeholder stored, hub,
               outbox, codec, emit, reply stored;
* gateway, HTTP upstream — the same behind a paced OpenAI-compatible server
               (`bench.servers upstream`), i.e. plus reading the upstream's SSE.

Reported per row: server-process CPU µs per delivered event, p50/p99 of the
gaps between consecutive events of a stream, and the gateway's CPU ratio to
the emit loop (target ≤ 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from typing import Any

import aiohttp
import jwt
import socketio

from bench.common import cpu_seconds, free_port, machine, percentile, start

DELTAS, DELAY_S = 64, 0.02
SECRET = "bench-secret-" + "x" * 32
# The demo model echoes the question inside a fixed sentence of 25 words:
# 39 more words make its reply 64 deltas, like the paced upstream's.
DEMO_QUESTION = " ".join(["ab"] * (DELTAS - 25))


class Receiver:
    """One client socket; records when each event of its stream arrives."""

    def __init__(self, index: int) -> None:
        self.user = f"bench-{index}"
        self.token = jwt.encode({"id": self.user}, SECRET, algorithm="HS256")
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.times: list[float] = []
        self.done = asyncio.Event()
        self.sio.on("events", self._on_event)

    async def _on_event(self, payload: dict[str, Any]) -> None:
        self.times.append(time.perf_counter())
        data = payload["data"]
        if data["type"] == "chat:active" and data["data"] == {"active": False}:
            self.done.set()

    async def connect(self, url: str) -> None:
        await self.sio.connect(
            url,
            socketio_path="/ws/socket.io",
            auth={"token": self.token},
            transports=["websocket"],
            wait_timeout=30,
        )

    def reset(self) -> None:
        self.times.clear()
        self.done.clear()

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.http.close()


async def start_emit_loop(receiver: Receiver, session: aiohttp.ClientSession, url: str) -> None:
    await receiver.sio.emit("start", uuid.uuid4().hex)


async def start_gateway_turn(
    receiver: Receiver, session: aiohttp.ClientSession, url: str, model: str
) -> None:
    question = DEMO_QUESTION if model == "gateway-demo" else "hi"
    message_id = str(uuid.uuid4())
    body = {
        "model": model,
        "stream": True,
        "session_id": receiver.sio.get_sid(),
        "id": message_id,
        "parent_id": None,
        "user_message": {"id": str(uuid.uuid4()), "role": "user", "content": question},
        "message_ids": [{"model_id": model, "message_id": message_id, "modelIdx": 0}],
    }
    headers = {"Authorization": f"Bearer {receiver.token}"}
    async with session.post(f"{url}/api/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()


async def run(
    url: str,
    pids: int | list[int],
    streams: int,
    rounds: int,
    model: str | None,
    post_url: str | None = None,
) -> dict[str, float]:
    """Sockets on `url`; turns POSTed to `post_url` (another replica) or `url`;
    CPU summed over `pids`."""
    pids = [pids] if isinstance(pids, int) else pids
    post_url = post_url or url
    receivers = [Receiver(i) for i in range(streams)]
    await asyncio.gather(*(r.connect(url) for r in receivers))
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one_round() -> None:
                for receiver in receivers:
                    receiver.reset()
                if model is None:
                    starts = (start_emit_loop(r, session, url) for r in receivers)
                else:
                    starts = (start_gateway_turn(r, session, post_url, model) for r in receivers)
                await asyncio.gather(*starts)
                await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in receivers)), 120)

            await one_round()  # warm-up: users, first chats, caches
            events = 0
            gaps: list[float] = []
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            for _ in range(rounds):
                await one_round()
                events += sum(len(r.times) for r in receivers)
                gaps += [gap for r in receivers for gap in r.gaps()]
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    finally:
        await asyncio.gather(*(r.close() for r in receivers))
    return {
        "events": events,
        "cpu_us_per_event": cpu / events * 1e6,
        "gap_p50_ms": percentile(gaps, 50) * 1000,
        "gap_p99_ms": percentile(gaps, 99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    up_port, emit_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    pace = [str(DELTAS), str(DELAY_S)]
    procs = [
        start(
            ["-m", "bench.servers", "upstream", str(up_port), *pace],
            health=f"{upstream_url}/models",
        )
    ]
    try:
        emit = start(["-m", "bench.servers", "sio-emit", str(emit_port), *pace])
        procs.append(emit)
        gateway = start(
            ["-m", "gateway", "serve", "--port", str(gw_port)],
            env={
                "OPENAI_API_BASE_URL": upstream_url,
                "GATEWAY_DEMO_TOKEN_DELAY_S": str(DELAY_S),
                "WEBUI_SECRET_KEY": SECRET,
                "DATA_DIR": f"bench/out/sio-{gw_port}",
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
            health=f"http://127.0.0.1:{gw_port}/health",
        )
        procs.append(gateway)
        gw_url = f"http://127.0.0.1:{gw_port}"
        rows = {
            "emit loop (python-socketio)": asyncio.run(
                run(f"http://127.0.0.1:{emit_port}", emit.pid, args.streams, args.rounds, None)
            ),
            "gateway, demo model": asyncio.run(
                run(gw_url, gateway.pid, args.streams, args.rounds, "gateway-demo")
            ),
            "gateway, HTTP upstream": asyncio.run(
                run(gw_url, gateway.pid, args.streams, args.rounds, "bench")
            ),
        }
        print(f"# Socket.IO bench — {time.strftime('%Y-%m-%d')} — {machine()}")
        print(
            f"# {args.streams} streams × {DELTAS} deltas {DELAY_S * 1000:.0f} ms apart, "
            f"{args.rounds} rounds per row (after one warm-up round)\n"
        )
        print("| server | events | CPU µs/event | gap p50 ms | gap p99 ms | CPU ÷ emit loop |")
        print("|---|---|---|---|---|---|")
        base = rows["emit loop (python-socketio)"]["cpu_us_per_event"]
        for name, row in rows.items():
            print(
                f"| {name} | {row['events']:.0f} | {row['cpu_us_per_event']:.1f} | "
                f"{row['gap_p50_ms']:.1f} | {row['gap_p99_ms']:.1f} | "
                f"×{row['cpu_us_per_event'] / base:.2f} |"
            )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
