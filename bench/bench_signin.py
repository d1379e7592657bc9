"""Sign-ins never stall running replies: streams measured quiet, then while 50
people sign in at once.

    python -m bench.bench_signin [--streams 20] [--signins 50] [--pairs 3]

The gateway hashes passwords (scrypt, about 35 ms of CPU each) on threads of
its own, off the event loop (`edge/passwords.py`).  This bench checks that
from outside: STREAMS OpenAI SSE replies (64 deltas 20 ms apart from the
paced upstream) run quiet, then again while SIGNINS sign-ins of one user with
the right password are sent at the same moment; the pairs alternate
(quiet-busy, then busy-quiet).  Reported for each case: the replies' time to
first token (p50, p99) and the longest gap between two chunks of a reply
(target under twice the upstream's 20 ms interval while the sign-ins run),
and the sign-ins' own latency (they queue for the hashing threads: that is
where the wait belongs).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import bench_sse
from bench.common import bench_auth, free_port, machine, percentile, start, start_gateway, stop

PASSWORD = "bench-signin-password"


async def one_stream(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(time to first token, longest gap between chunks) of one reply, seconds."""
    began = time.perf_counter()
    times: list[float] = []
    async with session.post(url, json=bench_sse.BODY, headers=bench_auth()) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content":"tok' in line:
                times.append(time.perf_counter())
    if len(times) != bench_sse.DELTAS:
        raise RuntimeError(f"a reply had {len(times)} chunks of {bench_sse.DELTAS}")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return times[0] - began, max(gaps)


async def sign_in(session: aiohttp.ClientSession, url: str, email: str) -> float:
    began = time.perf_counter()
    body = {"email": email, "password": PASSWORD}
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"sign-in answered {resp.status}: {await resp.text()}")
    return time.perf_counter() - began


async def run(base: str, streams: int, signins: int, pairs: int) -> dict[str, Any]:
    completions = f"{base}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    found: dict[str, dict[str, list[float]]] = {
        case: {"ttft": [], "gap": [], "signin": []} for case in ("quiet", "busy")
    }
    async with aiohttp.ClientSession(connector=connector) as session:
        # One account per sign-in: an account's attempts under way count against
        # its own limit (edge/throttle.py), as they would for one person.
        run_id = uuid.uuid4().hex[:8]
        emails = [f"signin-{run_id}-{i}@bench.example" for i in range(signins)]
        for email in emails:
            body = {"email": email, "password": PASSWORD, "name": "Bench"}
            async with session.post(f"{base}/api/v1/auths/signup", json=body) as resp:
                resp.raise_for_status()
        await one_stream(session, completions)  # warm-up: the user, the pool

        async def case(name: str) -> None:
            replies = [one_stream(session, completions) for _ in range(streams)]
            busy = [
                sign_in(session, f"{base}/api/v1/auths/signin", email)
                for email in (emails if name == "busy" else [])
            ]
            results = await asyncio.gather(*replies, *busy)
            for ttft, gap in results[:streams]:  # type: ignore[misc]
                found[name]["ttft"].append(ttft)
                found[name]["gap"].append(gap)
            found[name]["signin"] += results[streams:]  # type: ignore[arg-type]

        for pair in range(pairs):
            for name in ("quiet", "busy") if pair % 2 == 0 else ("busy", "quiet"):
                await case(name)
    return {
        name: {
            "ttft_p50_ms": percentile(data["ttft"], 50) * 1000,
            "ttft_p99_ms": percentile(data["ttft"], 99) * 1000,
            "gap_max_ms": max(data["gap"]) * 1000,
            "gap_p99_ms": percentile(data["gap"], 99) * 1000,
            "signin_p50_ms": percentile(data["signin"], 50) * 1000 if data["signin"] else None,
            "signin_max_ms": max(data["signin"]) * 1000 if data["signin"] else None,
        }
        for name, data in found.items()
    }


def measure(
    streams: int = 20,
    signins: int = 50,
    pairs: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    pace = [str(bench_sse.DELTAS), str(bench_sse.DELAY_S)]
    procs = [
        start(["-m", "bench.servers", "upstream", str(up_port), *pace], health=f"{upstream}/models")
    ]
    try:
        # Every account signs in from this one address: its bound is lifted, as
        # start_gateway lifts the other per-address bounds.
        lifted = {"GATEWAY_SIGNIN_MAX_FAILURES_PER_ADDRESS": str(10 * signins)}
        procs.append(start_gateway(gw_port, upstream, lifted))
        progress(f"{streams} streams, quiet and during {signins} sign-ins")
        cases = asyncio.run(run(f"http://127.0.0.1:{gw_port}", streams, signins, pairs))
    finally:
        for proc in procs:
            stop(proc)
    return {
        "streams": streams,
        "signins": signins,
        "pairs": pairs,
        "interval_ms": bench_sse.DELAY_S * 1000,
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--signins", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    found = measure(args.streams, args.signins, args.pairs)
    print(
        f"{machine()}; {found['streams']} streams, {found['signins']} sign-ins, {found['pairs']} pairs"
    )
    print("| case | TTFT p50 / p99 ms | longest gap in a reply, p99 / max ms | sign-in p50 / max ms |")
    print("|---|---|---|---|")
    for name, row in found["cases"].items():
        signin = (
            f"{row['signin_p50_ms']:.0f} / {row['signin_max_ms']:.0f}"
            if row["signin_p50_ms"] is not None
            else "–"
        )
        print(
            f"| {name} | {row['ttft_p50_ms']:.1f} / {row['ttft_p99_ms']:.1f} "
            f"| {row['gap_p99_ms']:.1f} / {row['gap_max_ms']:.1f} | {signin} |"
        )


if __name__ == "__main__":
    main()
