"""Helpers shared by the benchmarks: processes, CPU time, percentiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import jwt

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, from /proc (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start(
    args: Sequence[str], env: dict[str, str] | None = None, health: str | None = None
) -> subprocess.Popen[bytes]:
    data_dir = (env or {}).get("DATA_DIR")
    if data_dir:
        # The gateway makes its data dir but never the parents (a typo must not
        # create directories all over the disk): the bench's tree is made here.
        (ROOT / data_dir).mkdir(parents=True, exist_ok=True)
    log = _log_file(args)
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    if not isinstance(log, int):
        log.close()  # the process has its own copy
    if health:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(health, timeout=1):
                    return proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"{args} did not come up at {health}")
    time.sleep(0.5)
    return proc


def _log_file(args: Sequence[str]) -> int | IO[bytes]:
    """Where a started process's log goes: nowhere, unless `BENCH_LOGS`
    names a directory (then one file per process, named by its command and the
    time it started, to read what a replica said during a run)."""
    directory = os.environ.get("BENCH_LOGS")
    if not directory:
        return subprocess.DEVNULL
    name = "-".join(arg.strip("-").replace("/", "_") for arg in args if arg != "-m")[:80]
    path = Path(directory) / f"{time.strftime('%H%M%S')}-{time.monotonic_ns()}-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process the bench started: terminate, wait, kill."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


BENCH_SECRET = "bench-secret-" + "x" * 32


def start_gateway(
    port: int, upstream_url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A gateway process in front of `upstream_url` only (no demo model), quiet logs;
    `env` adds or overrides settings."""
    return start(
        ["-m", "gateway", "serve", "--port", str(port)],
        env={
            "OPENAI_API_BASE_URL": upstream_url,
            "GATEWAY_DEMO_MODEL": "false",
            "WEBUI_SECRET_KEY": BENCH_SECRET,
            "DATA_DIR": "bench/out/data",
            "GATEWAY_LOG_LEVEL": "WARNING",
            # One user and one address make the whole load: the bounds meant for a
            # real client's share (LIMITS.md) are lifted.
            "GATEWAY_MAX_REPLIES_PER_USER": "",
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
            "GATEWAY_MAX_FOLLOWERS_PER_USER": "100000",
            **(env or {}),
        },
        health=f"http://127.0.0.1:{port}/health",
    )


def bench_auth() -> dict[str, str]:
    """The header of the bench's user, for a gateway from `start_gateway`."""
    return {
        "Authorization": "Bearer " + jwt.encode({"id": "bench"}, BENCH_SECRET, algorithm="HS256")
    }
