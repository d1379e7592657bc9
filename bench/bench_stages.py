"""Where a stored turn's time to first token goes: the stages of one turn, timed.

    python -m bench.bench_stages [--flavour nadoo-ws|ragflow-ws|ragflow-sse|socketio]
                                 [--turns 40] [--database-url postgresql://…]
    python -m bench.bench_stages serve PORT MARKS   (the timed gateway, run by the bench)

A paced upstream (16 deltas 20 ms apart) and a gateway in front of it; the
gateway runs in a process of its own with a time mark (`time.perf_counter`,
the machine's monotonic clock, shared by the processes) at the entry and exit
of each stage, set by wrapping the gateway's functions from outside (nothing in
`gateway/` knows of it).  One client of the flavour (`bench_flavours`' own)
asks TURNS questions one after the other (after 3 unmeasured): a new chat each
on Nadoo, on RAGFlow's socket and in the web app's turn (its POST, the reply on
its Socket.IO socket), a session made beforehand on RAGFlow's SSE.
Per turn, each mark is placed against the moment the client sent its question,
and the medians are printed:

    request>          the question reaches the endpoint (a socket's frame, or
                      the HTTP request's handler: RAGFlow's SSE, the web app's POST)
    db_read> / <      the first read of the store (an API key, an assistant, a
                      session, a history); and before the model server's request,
                      how many reads, and how many waits for the store (reads in
                      flight together are one wait)
    answer_turn>      the turn planned, about to be written
    db_batch> / <     the turn's rows written (the question and the placeholder)
    upstream_open> /< the model server's request begun (`OpenAIUpstream.open`
                      entered; its bytes go out within the next loop turn or two)
                      / its response's headers in
    upstream_bytes    the model server's first content chunk read
    publish_delta     the first delta published to the rooms
    send_delta>       its frame handed to the socket, or its SSE event written
                      (not marked on Socket.IO, whose writer is python-engineio's)
    client_first      the client has it

The upstream's own pace (its first delta 20 ms after its headers) is in the
gap between `upstream_open<` and `upstream_bytes`; everything else is the
gateway's, or the loopback's.  The marks cost a few microseconds each.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BENCH_SECRET, ROOT, free_port, machine, start, stop

MARKS: list[tuple[str, float]] = []


def _mark(name: str) -> None:
    MARKS.append((name, time.perf_counter()))


def _timed(owner: Any, name: str, label: str) -> None:
    """`owner.name` (a coroutine function) with a mark at its entry and its exit."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(label + ">")
        try:
            return await original(*args, **kwargs)
        finally:
            _mark(label + "<")

    setattr(owner, name, timed)


FLAVOURS = ("nadoo-ws", "ragflow-ws", "ragflow-sse", "socketio")


def serve(port: int, marks: Path) -> None:
    """The gateway, with the marks; they are written to `marks` on SIGUSR1."""
    from aiohttp import web

    from gateway.api import nadoo
    from gateway.api.openwebui import completions as webapp
    from gateway.api.ragflow import http as ragflow_http
    from gateway.api.ragflow import ws as ragflow_ws
    from gateway.chat import runner, service
    from gateway.events import TextDelta
    from gateway.fanout import hub
    from gateway.store import drivers
    from gateway.transports import websocket_delivery, websocket_frames
    from gateway.upstream import chunks
    from gateway.upstream import openai as upstream

    signal.signal(signal.SIGUSR1, lambda *_: marks.write_text(json.dumps(MARKS)))
    _timed(nadoo.ChatEndpoint, "received", "request")
    _timed(ragflow_ws.ChatSocket, "received", "request")
    # Their routes are bound when the app is made, below: after this.
    _timed(ragflow_http, "completions", "request")
    _timed(webapp, "chat_completions", "request")
    _timed(drivers.SQLiteDriver, "fetch", "db_read")
    _timed(drivers.PostgresDriver, "fetch", "db_read")
    for driver in (drivers.SQLiteDriver, drivers.PostgresDriver):
        if hasattr(driver, "fetch_then"):  # a read and the read it decides, one call
            _timed(driver, "fetch_then", "db_read")
    _timed(service.ChatService, "_answer", "answer_turn")
    _timed(drivers.SQLiteDriver, "batch", "db_batch")
    _timed(drivers.PostgresDriver, "batch", "db_batch")
    _timed(runner.ReplyRunner, "_run", "runner_run")
    _timed(upstream.OpenAIUpstream, "open", "upstream_open")
    feed = chunks.ChunkDecoder.feed

    def fed(self: chunks.ChunkDecoder, data: bytes) -> Any:
        _mark("upstream_bytes")
        return feed(self, data)

    chunks.ChunkDecoder.feed = fed  # type: ignore[method-assign]
    reply_event = hub.Hub.reply_event

    def published(self: hub.Hub, user_id: str, rooms: Any, event: Any) -> None:
        if type(event) is TextDelta:
            _mark("publish_delta")
        reply_event(self, user_id, rooms, event)

    hub.Hub.reply_event = published  # type: ignore[method-assign]
    # A frame reaches the socket at the end of the publisher's loop turn
    # (`Delivering._flush` → `websocket_frames.write_now`), or through the pump
    # while the socket is backed up (`Delivering._send`).
    write_now = websocket_frames.write_now

    def written(ws: Any, frame: str) -> None:
        _mark("sent")
        write_now(ws, frame)

    websocket_frames.write_now = written
    send = websocket_delivery.Delivering._send

    async def sent(self: Any, frame: str) -> None:
        _mark("sent")
        await send(self, frame)

    websocket_delivery.Delivering._send = sent  # type: ignore[method-assign]
    # RAGFlow's SSE: every write of the reply's response.  Of all these marks, the
    # last one before the client has its first delta is the write that carried it.
    write = web.StreamResponse.write

    async def wrote(self: web.StreamResponse, data: Any) -> None:
        _mark("sent")
        await write(self, data)

    web.StreamResponse.write = wrote  # type: ignore[method-assign]
    from gateway.cli import main

    sys.exit(main(["serve", "--port", str(port)]))


async def _client(flavour: str, port: int, turns: int) -> list[tuple[float, float]]:
    """(sent, first delta) per measured turn, from one client of `flavour`."""
    import aiohttp

    from bench import bench_flavours as flavours

    base = f"http://127.0.0.1:{port}"
    servers = flavours.Servers(f"{base}/v1", base, base, 0, 0)
    async with aiohttp.ClientSession() as http:
        ids = flavours.Identities(base)
        client = flavours.make_client(flavour, "gateway", 0, http, servers, ids)
        await client.open(turns + 3)
        found = []
        for index in range(turns + 3):
            stream = flavours.Stream()
            await client.turn(index, stream)
            if stream.error:
                raise RuntimeError(f"turn {index}: {stream.error}")
            if index >= 3 and stream.times:
                found.append((stream.began, stream.times[0]))
            await asyncio.sleep(0.05)
        await client.close()
    return found


def medians(marks: list[tuple[str, float]], turns: list[tuple[float, float]]) -> dict[str, float]:
    """Per stage, the median of (its first mark in the turn − the question sent), ms;
    `db_reads` and `db_waits`, the median counts of store reads begun before the model
    server's request was sent, and of the waits for them."""
    by_stage: dict[str, list[float]] = {}
    for sent, first in turns:
        seen: dict[str, float] = {}
        inside = [(name, at) for name, at in marks if sent <= at <= first]
        publish = next((at for name, at in inside if name == "publish_delta"), None)
        opened = next((at for name, at in inside if name == "upstream_open>"), first)
        for name, at in inside:
            if name == "upstream_bytes":
                # The read that brought the first content: the last one before its publish.
                if publish is not None and at <= publish:
                    seen[name] = at
            elif name == "sent":
                # The write that carried the first delta: the last one before the client had it.
                seen["send_delta>"] = at
            else:
                seen.setdefault(name, at)
        seen["client_first"] = first
        for name, at in seen.items():
            by_stage.setdefault(name, []).append((at - sent) * 1000)
        reads = waits = in_flight = 0
        for name, at in inside:
            if at > opened:
                break
            if name == "db_read>":
                reads += 1
                waits += in_flight == 0  # a read begun with none in flight: one more wait
                in_flight += 1
            elif name == "db_read<":
                in_flight = max(0, in_flight - 1)  # one begun before the question: not ours
        by_stage.setdefault("db_reads", []).append(reads)
        by_stage.setdefault("db_waits", []).append(waits)
    return {name: round(statistics.median(v), 3) for name, v in by_stage.items()}


def measure(
    turns: int = 40,
    progress: Callable[[str], None] = lambda _: None,
    database_url: str | None = None,
    flavour: str = "nadoo-ws",
) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    marks = out / "stages.json"
    procs = [
        start(["-m", "bench.servers", "upstream", str(up_port), "16", "0.02"],
              health=f"{upstream_url}/models")
    ]  # fmt: skip
    try:
        progress("the timed gateway")
        gateway = start(
            ["-m", "bench.bench_stages", "serve", str(gw_port), str(marks)],
            env={
                "OPENAI_API_BASE_URL": upstream_url,
                "GATEWAY_DEMO_MODEL": "false",
                "WEBUI_SECRET_KEY": BENCH_SECRET,
                "DATA_DIR": "bench/out/stages-data",
                "GATEWAY_LOG_LEVEL": "WARNING",
                **({"DATABASE_URL": database_url} if database_url else {}),
            },
            health=f"http://127.0.0.1:{gw_port}/health",
        )
        procs.append(gateway)
        progress(f"{turns} turns")
        measured = asyncio.run(_client(flavour, gw_port, turns))
        os.kill(gateway.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not marks.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stages = medians([tuple(m) for m in json.loads(marks.read_text())], measured)
        marks.unlink()
    finally:
        for proc in procs:
            stop(proc)
    if not measured:
        raise RuntimeError("no turn was measured: ask for at least one (--turns)")
    reads, waits = stages.pop("db_reads"), stages.pop("db_waits")
    ordered = dict(sorted(stages.items(), key=lambda i: i[1]))
    return {
        "flavour": flavour,
        "turns": len(measured),
        "db_reads": reads,
        "db_waits": waits,
        "stages_ms": ordered,
    }


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", choices=FLAVOURS, default="nadoo-ws")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument(
        "--database-url", help="the gateway's DATABASE_URL (default: SQLite in bench/out)"
    )
    args = parser.parse_args()
    progress = lambda what: print(f"… {what}", file=sys.stderr)  # noqa: E731
    result = measure(args.turns, progress, args.database_url, args.flavour)
    print(f"# Stages of a stored turn — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}")
    print(
        f"\nmedians of {result['turns']} {args.flavour} turns, ms after the client sent"
        f" its question; before the model server's request, {result['db_reads']:g} store"
        f" reads, waited for {result['db_waits']:g} times (reads in flight together are one"
        " wait):\n"
    )
    print("| stage | ms |\n|---|---|")
    for name, ms in result["stages_ms"].items():
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
