"""Replay buffer: CPU per delivered event with the buffer on vs off.

    python -m bench.bench_replay [--streams 50] [--deltas 256] [--pairs 12]
    python -m bench.bench_replay --quick          # under 3 minutes

The Socket.IO load of `bench.bench_socketio` (STREAMS python-socketio clients,
one user each, each receiving one long reply per round from a paced
OpenAI-compatible upstream, `bench.servers upstream`: DELTAS deltas 20 ms
apart), against four gateways started side by side in one run, each with its
own SQLite data dir and its own STREAMS sockets, connected for the whole run:

* in-process, buffer off  — `GATEWAY_REPLAY_EVENTS=0` (the baseline);
* in-process, buffer on   — the default (`LocalJournal`, a ring per reply);
* Redis, buffer off       — `WEBSOCKET_MANAGER=redis`, `GATEWAY_REPLAY_EVENTS=0`
                            (the baseline for Redis);
* Redis, buffer on        — the default on Redis (`RedisJournal`: a stream per
                            reply, written in batches every 20 ms).

The machine is shared and noisy, so off and on alternate round by round (pair
i runs off then on, pair i + 1 on then off; the buses alternate too), each
round is measured on its own (after one warm-up round per gateway), and the
figure is the median of the pairs' ratios.  Reported: each gateway's process
CPU (user + system, /proc) per event delivered to a client, the Redis server's
own CPU beside it, gaps between a stream's events, and on ÷ off for each bus
(targets, issue 16: ≤ ×1.2 in-process, ≤ ×1.5 with Redis).  Then, without a
gateway, the buffer alone (`make_journal`'s `record`, and on Redis its flusher)
with STREAMS replies side by side: its CPU µs per event, which explains the
ratios without their noise.  The run fails if a gateway's buffer was not what
its row says (the SSE attach of a finished reply replays its deltas only when
on; reply streams are in Redis only for Redis on).  Redis must run on
127.0.0.1:6379; the keys this run wrote are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
import uuid
from typing import Any

import aiohttp
import redis

from bench.bench_scale import redis_pid
from bench.bench_socketio import SECRET, Receiver, start_gateway_turn
from bench.common import cpu_seconds, free_port, machine, percentile, start
from gateway.bus.journal import FLUSH_S
from gateway.bus.make import make_journal
from gateway.events import ReplyFinished, ReplyStarted, TextDelta, Usage

DELAY_S = 0.02
# After a round, before the CPU is read: the reply's last writes (row, Redis flush).
SETTLE_S = 0.2
REDIS_URL = "redis://127.0.0.1:6379/0"
OFF, ON = "off", "on"
BUSES = ("in-process", "Redis")
TARGETS = {"in-process": 1.2, "Redis": 1.5}


def gateway(
    upstream_url: str, data_dir: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start(
        ["-m", "gateway", "serve", "--port", str(port)],
        env={
            "OPENAI_API_BASE_URL": upstream_url,
            "GATEWAY_DEMO_MODEL": "false",
            "WEBUI_SECRET_KEY": SECRET,
            "DATA_DIR": data_dir,
            "GATEWAY_LOG_LEVEL": "WARNING",
            **env,
        },
        health=f"http://127.0.0.1:{port}/health",
    )
    return proc, f"http://127.0.0.1:{port}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Tracked(Receiver):
    """A receiver that remembers which reply it got last."""

    last: tuple[str, str] | None = None

    async def _on_event(self, payload: dict[str, Any]) -> None:
        self.last = (payload["chat_id"], payload["message_id"])
        await super()._on_event(payload)


class Target:
    """One gateway and the sockets connected to it for the whole run."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, streams: int) -> None:
        self.proc, self.url = proc, url
        self.receivers = [Tracked(i) for i in range(streams)]

    async def replayed(self, session: aiohttp.ClientSession) -> int:
        """The deltas the buffer gives back of the first socket's last reply (SSE
        attach from its start): all of them when it is on, none (a snapshot) when off."""
        receiver = self.receivers[0]
        assert receiver.last is not None
        chat_id, message_id = receiver.last
        url = f"{self.url}/api/v1/chats/{chat_id}/messages/{message_id}/stream?after=0"
        headers = {"Authorization": f"Bearer {receiver.token}"}
        async with session.get(url, headers=headers) as resp:
            body = await asyncio.wait_for(resp.read(), 30)
        return body.count(b'"chat:message:delta"')

    async def connect(self) -> None:
        await asyncio.gather(*(r.connect(self.url) for r in self.receivers))

    async def round(self, session: aiohttp.ClientSession, rpid: int) -> dict[str, float]:
        """One reply to every socket; the gateway's and Redis's CPU per delivered event."""
        for receiver in self.receivers:
            receiver.reset()
        cpu_before, redis_before = cpu_seconds(self.proc.pid), cpu_seconds(rpid)
        await asyncio.gather(
            *(start_gateway_turn(r, session, self.url, "bench") for r in self.receivers)
        )
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in self.receivers)), 120)
        await asyncio.sleep(SETTLE_S)
        cpu, redis_cpu = cpu_seconds(self.proc.pid) - cpu_before, cpu_seconds(rpid) - redis_before
        events = sum(len(r.times) for r in self.receivers)
        gaps = [gap for r in self.receivers for gap in r.gaps()]
        return {
            "events": events,
            "cpu_us_per_event": cpu / events * 1e6,
            "redis_us": redis_cpu / events * 1e6,
            "gap_p50_ms": percentile(gaps, 50) * 1000,
            "gap_p99_ms": percentile(gaps, 99) * 1000,
        }

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.receivers), return_exceptions=True)


async def measure(
    gateways: dict[tuple[str, str], tuple[subprocess.Popen[bytes], str]],
    streams: int,
    pairs: int,
    rpid: int,
) -> tuple[dict[tuple[str, str], list[dict[str, float]]], dict[str, list[float]]]:
    targets = {key: Target(proc, url, streams) for key, (proc, url) in gateways.items()}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in targets}
    ratios: dict[str, list[float]] = {bus: [] for bus in BUSES}
    began = time.monotonic()
    try:
        for target in targets.values():
            await target.connect()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for target in targets.values():
                await target.round(session, rpid)  # warm-up: users, first chats, caches
            print(f"connected and warmed up in {time.monotonic() - began:.0f} s", flush=True)
            for pair in range(pairs):
                # Alternate which runs first, and which bus, from pair to pair.
                states = (OFF, ON) if pair % 2 == 0 else (ON, OFF)
                buses = BUSES if pair % 2 == 0 else BUSES[::-1]
                for bus in buses:
                    cost: dict[str, float] = {}
                    for state in states:
                        row = await targets[bus, state].round(session, rpid)
                        runs[bus, state].append(row)
                        cost[state] = row["cpu_us_per_event"]
                    ratios[bus].append(cost[ON] / cost[OFF])
                    print(
                        f"pair {pair + 1}/{pairs} {bus}: off {cost[OFF]:.1f} µs/event, "
                        f"on {cost[ON]:.1f} µs/event, ×{ratios[bus][-1]:.3f} "
                        f"({time.monotonic() - began:.0f} s)",
                        flush=True,
                    )
            # The work tree may change under a long run: check each gateway's buffer
            # was what its row says.
            for (bus, state), target in targets.items():
                replayed = await target.replayed(session)
                if (replayed > 0) != (state == ON):
                    raise RuntimeError(
                        f"{bus}, buffer {state}: {replayed} deltas replayed of a finished reply"
                    )
                print(f"{bus}, buffer {state}: {replayed} deltas replayed", flush=True)
    finally:
        for target in targets.values():
            await target.close()
    return runs, ratios


def reply_events(index: int, deltas: int) -> list[ReplyStarted | TextDelta | ReplyFinished]:
    chat_id, message_id = f"chat-{index}", str(uuid.uuid4())
    text = [f"tok{i} " for i in range(deltas)]
    return [
        ReplyStarted(
            chat_id=chat_id,
            message_id=message_id,
            seq=0,
            user_id=f"bench-{index}",
            parent_id=None,
            model="bench",
            started_at=time.time(),
        ),
        *(
            TextDelta(chat_id=chat_id, message_id=message_id, seq=i + 1, text=t)
            for i, t in enumerate(text)
        ),
        ReplyFinished(
            chat_id=chat_id,
            message_id=message_id,
            seq=deltas + 1,
            content="".join(text),
            usage=Usage(prompt_tokens=1, completion_tokens=deltas),
            finish_reason="stop",
            elapsed_s=1.0,
        ),
    ]


async def journal_alone(
    replies: int, deltas: int, per_flush: int, prefix: str | None, rpid: int
) -> tuple[float, float]:
    """The buffer's own cost, without a gateway around it: `replies` replies recorded
    side by side, `per_flush` events of each every FLUSH_S (on Redis, written by the
    journal's own flusher).  CPU µs per event of this process, and of the Redis
    server; the second of two passes (the first opens the connections)."""
    journal = make_journal(REDIS_URL if prefix else None, prefix or "", 10_000, 60.0)
    try:
        for _ in range(2):
            streams = [reply_events(index, deltas) for index in range(replies)]
            cpu, redis_cpu = time.process_time(), cpu_seconds(rpid)
            for tick in range(0, deltas + 2, per_flush):
                for index, reply in enumerate(streams):
                    for event in reply[tick : tick + per_flush]:
                        journal.record(f"bench-{index}", event)
                if prefix:
                    await asyncio.sleep(FLUSH_S)
            if prefix:
                await asyncio.sleep(SETTLE_S)  # the last batches (an end is written at once)
            cpu, redis_cpu = time.process_time() - cpu, cpu_seconds(rpid) - redis_cpu
    finally:
        await journal.close()
    count = replies * (deltas + 2)
    return cpu / count * 1e6, redis_cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50, help="sockets per gateway")
    parser.add_argument("--deltas", type=int, default=256, help="deltas per reply")
    parser.add_argument("--pairs", type=int, default=12, help="off/on pairs of rounds per bus")
    parser.add_argument(
        "--quick", action="store_true", help="50 streams, 128 deltas, 6 pairs: under 3 minutes"
    )
    args = parser.parse_args()
    if args.quick:
        args.streams, args.deltas, args.pairs = 50, 128, 6

    tag = uuid.uuid4().hex[:6]
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    prefixes = {OFF: f"bench-replay-{tag}-off:", ON: f"bench-replay-{tag}-on:"}
    alone_prefix = f"bench-replay-{tag}-alone:"
    on_redis = {"WEBSOCKET_MANAGER": "redis", "REDIS_URL": REDIS_URL}
    envs = {
        ("in-process", OFF): {"GATEWAY_REPLAY_EVENTS": "0"},
        ("in-process", ON): {},
        ("Redis", OFF): {
            **on_redis,
            "GATEWAY_REDIS_KEY_PREFIX": prefixes[OFF],
            "GATEWAY_REPLAY_EVENTS": "0",
        },
        ("Redis", ON): {**on_redis, "GATEWAY_REDIS_KEY_PREFIX": prefixes[ON]},
    }
    rpid = redis_pid()
    procs: list[subprocess.Popen[bytes]] = []
    began = time.monotonic()
    try:
        procs.append(
            start(
                ["-m", "bench.servers", "upstream", str(up_port), str(args.deltas), str(DELAY_S)],
                health=f"{upstream_url}/models",
            )
        )
        gateways = {}
        for bus, state in envs:
            data_dir = f"bench/out/replay-{tag}/{bus.lower()}-{state}"
            proc, url = gateway(upstream_url, data_dir, envs[bus, state])
            procs.append(proc)
            gateways[bus, state] = (proc, url)
        runs, ratios = asyncio.run(measure(gateways, args.streams, args.pairs, rpid))
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        procs = []
        # And that the Redis buffer reached Redis (a reply's stream), not only its queue.
        with redis.Redis.from_url(REDIS_URL) as client:
            for state, prefix in prefixes.items():
                kept = sum(1 for _ in client.scan_iter(match=f"{prefix}journal:r:*", count=1000))
                if (kept > 0) != (state == ON):
                    raise RuntimeError(f"Redis, buffer {state}: {kept} reply streams in Redis")
                print(f"Redis, buffer {state}: {kept} reply streams in Redis", flush=True)
        # The journal alone, in this process (the gateways stopped: a quieter machine).
        short = min(args.deltas, 128)
        alone = {
            "in-process, 1 event of a reply at a time": asyncio.run(
                journal_alone(args.streams, short, 1, None, rpid)
            ),
            f"Redis, 1 event per reply per {FLUSH_S * 1000:.0f} ms flush": asyncio.run(
                journal_alone(args.streams, short, 1, alone_prefix, rpid)
            ),
            f"Redis, 5 events per reply per {FLUSH_S * 1000:.0f} ms flush": asyncio.run(
                journal_alone(args.streams, short, 5, alone_prefix, rpid)
            ),
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        with redis.Redis.from_url(REDIS_URL) as client:
            for prefix in [*prefixes.values(), alone_prefix]:
                for key in client.scan_iter(match=f"{prefix}*", count=1000):
                    client.delete(key)

    elapsed = time.monotonic() - began
    print(f"\n# Replay buffer bench — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(
        f"# {args.streams} Socket.IO streams × {args.deltas} deltas {DELAY_S * 1000:.0f} ms apart "
        f"(paced HTTP upstream), {args.pairs} off/on pairs of rounds per bus, "
        f"interleaved, after a warm-up round; {elapsed:.0f} s in all\n"
    )
    print(
        "| bus | buffer | events/round | CPU µs/event (median; min–max) | Redis µs/event | "
        "gap p50 ms | gap p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for (bus, state), rows in runs.items():
        cpu = [r["cpu_us_per_event"] for r in rows]
        redis_us = f"{median([r['redis_us'] for r in rows]):.1f}" if bus == "Redis" else "–"
        print(
            f"| {bus} | {state} | {median([r['events'] for r in rows]):.0f} | "
            f"{median(cpu):.1f}; {min(cpu):.1f}–{max(cpu):.1f} | {redis_us} | "
            f"{median([r['gap_p50_ms'] for r in rows]):.1f} | "
            f"{median([r['gap_p99_ms'] for r in rows]):.1f} |"
        )
    print("\n| bus | on ÷ off, each pair | median | target | met |")
    print("|---|---|---|---|---|")
    for bus in BUSES:
        each = ", ".join(f"×{r:.2f}" for r in ratios[bus])
        got = median(ratios[bus])
        verdict = "yes" if got <= TARGETS[bus] else "**no**"
        print(f"| {bus} | {each} | **×{got:.2f}** | ≤ ×{TARGETS[bus]} | {verdict} |")
    # With Redis, the Redis server's CPU is the buffer's cost too: the ratio of the sums.
    both = [
        (on["cpu_us_per_event"] + on["redis_us"]) / (off["cpu_us_per_event"] + off["redis_us"])
        for off, on in zip(runs["Redis", OFF], runs["Redis", ON], strict=True)
    ]
    print(
        f"| Redis, gateway + Redis server | {', '.join(f'×{r:.2f}' for r in both)} | "
        f"×{median(both):.2f} | | |"
    )

    base = {bus: median([r["cpu_us_per_event"] for r in runs[bus, OFF]]) for bus in BUSES}
    print(
        f"\n| the buffer alone ({args.streams} replies side by side) | CPU µs/event | "
        "Redis µs/event | (gateway with the buffer off + this) ÷ gateway off |"
    )
    print("|---|---|---|---|")
    for label, (us, redis_alone) in alone.items():
        bus = "Redis" if label.startswith("Redis") else "in-process"
        redis_cell = f"{redis_alone:.1f}" if bus == "Redis" else "–"
        print(f"| {label} | {us:.1f} | {redis_cell} | ×{1 + us / base[bus]:.2f} |")


if __name__ == "__main__":
    main()
