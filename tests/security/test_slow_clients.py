"""Slow clients and connection floods (issue 13, hole 6): connections that send a request
body one byte at a time, or headers that never end, or just stay open, are cut after the
timeouts; one address cannot hold more than its share; the process stays below its
open-files limit and `/health` keeps answering; failures to accept are one log line per
interval, not a traceback per attempt.

The gateways here run with timeouts of a second or two and small caps so that each attack
plays out in seconds.  SECURITY.md, section "Connections and slow clients", says what the
gateway decides and why.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gatewayproc import GatewayProcess

# Loopback holds all of 127/8: each of these is a client address of its own.
ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"
# Loopback is a trusted proxy by default (exempt from the per-address cap): not here.
NOT_LOOPBACK = {"GATEWAY_TRUSTED_PROXIES": "192.0.2.1/32"}
SIGNIN_HEAD = (
    "POST /api/v1/auths/signin HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    "Content-Length: 100\r\n\r\n"
)


def under_open_files_limit(files: int) -> tuple[str, ...]:
    """A command prefix that runs the rest with soft and hard RLIMIT_NOFILE at `files`."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({files}, {files})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return (sys.executable, "-c", code)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def start(env: dict[str, str], wrapper: tuple[str, ...] = ()) -> GatewayProcess:
        proc = GatewayProcess(
            tmp_path / f"gw{len(started)}", {**NOT_LOOPBACK, **env}, wrapper=wrapper
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class Slow:
    """One raw connection from `source`, sending what it is told and no more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gw: GatewayProcess, source: str, sent: str) -> Slow:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, local_addr=(source, 0)
        )
        if sent:
            writer.write(sent.encode())
            await writer.drain()
        return cls(reader, writer)

    async def outcome(self, within_s: float) -> str:
        """The status line the gateway answered ("" for none), once it closed the
        connection; "open" if it had not closed it within `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                data = await self.reader.read()
        except TimeoutError:
            return "open"
        except ConnectionError:
            return "reset"
        finally:
            self.writer.close()
        return data.split(b"\r\n", 1)[0].decode(errors="replace")

    async def status_line(self, within_s: float) -> str:
        async with asyncio.timeout(within_s):
            return (await self.reader.readline()).decode().strip()


async def health_s(gw: GatewayProcess, source: str = BYSTANDER, timeout_s: float = 5) -> float:
    """Seconds `/health` took from `source` (an assertion failure if it did not answer)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(
            gw.url + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            assert resp.status == 200
    return time.monotonic() - started


# -- the report's attack ------------------------------------------------------------------
async def test_slow_sign_in_bodies_are_cut_and_health_answers(gateways: Any) -> None:
    """260 sign-ins that sent 1 byte of a 100-byte body, under a 256-descriptor limit:
    the gateway's share for one address is taken, the rest refused at once, the slow
    ones cut after the body timeout, and `/health` answers all along."""
    gw = gateways(
        {"GATEWAY_REQUEST_BODY_TIMEOUT_S": "1.5", "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "64"},
        wrapper=under_open_files_limit(256),
    )
    started = time.monotonic()
    attackers = await asyncio.gather(
        *(Slow.open(gw, ATTACKER, SIGNIN_HEAD + "{") for _ in range(260))
    )
    assert await health_s(gw) < 0.5
    assert "cannot accept" not in gw.log()  # never out of descriptors
    outcomes = await asyncio.gather(*(slow.outcome(within_s=6) for slow in attackers))
    took = time.monotonic() - started
    counts = {status: outcomes.count(status) for status in set(outcomes)}
    assert counts.get("HTTP/1.1 408 Request Timeout") == 64, counts
    refused = counts.get("HTTP/1.1 429 Too Many Requests", 0) + counts.get("reset", 0)
    assert refused == 260 - 64, counts
    assert took < 6, took
    # Their places are free again.
    assert await health_s(gw, ATTACKER) < 0.5
    log = gw.log()
    assert "at most 128 client connections" in log  # 256 less the reserve
    assert "Traceback" not in log
    assert log.count("refused: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS") <= 2


async def test_slow_headers_and_idle_connections_are_cut(gateways: Any) -> None:
    gw = gateways({"GATEWAY_KEEPALIVE_TIMEOUT_S": "1.5"})
    started = time.monotonic()
    slow = await asyncio.gather(
        Slow.open(gw, ATTACKER, ""),  # says nothing at all
        Slow.open(gw, ATTACKER, "POST /api/v1/auths/signin HTTP/1.1\r\nHost: gw\r\n"),
        Slow.open(gw, ATTACKER, "GET /hea"),
    )
    # One that finished a request, then idles on its kept-alive connection.
    idle = await Slow.open(gw, ATTACKER, "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert await health_s(gw) < 0.5
    outcomes = await asyncio.gather(*(conn.outcome(within_s=5) for conn in [*slow, idle]))
    took = time.monotonic() - started
    assert "open" not in outcomes, outcomes
    assert outcomes[3] == "HTTP/1.1 200 OK"
    assert 1.0 < took < 4, took


async def test_a_body_in_time_is_read_whole(gateways: Any) -> None:
    """The timeout is for the body as a whole: one that arrives in pieces within it is fine."""
    gw = gateways({"GATEWAY_REQUEST_BODY_TIMEOUT_S": "2"})
    body = '{"email": "nobody@example.com", "password": "wrong password"}'
    head = SIGNIN_HEAD.replace("Content-Length: 100", f"Content-Length: {len(body)}")
    conn = await Slow.open(gw, ATTACKER, head)
    for piece in (body[:10], body[10:30], body[30:]):
        await asyncio.sleep(0.4)
        conn.writer.write(piece.encode())
    status = await conn.status_line(within_s=5)
    conn.writer.close()
    # Whatever the sign-in says (the password is wrong), it was read and answered.
    assert status.startswith("HTTP/1.1 4") and "408" not in status, status


# -- caps -----------------------------------------------------------------------------------
async def test_per_address_cap_refuses_the_excess_only(gateways: Any) -> None:
    gw = gateways({"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "20"})
    held = [await Slow.open(gw, ATTACKER, "") for _ in range(20)]
    started = time.monotonic()
    excess = await Slow.open(gw, ATTACKER, "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert await excess.outcome(within_s=2) in ("HTTP/1.1 429 Too Many Requests", "reset")
    assert time.monotonic() - started < 1
    # Another address is not affected, and a freed place is taken again.
    assert await health_s(gw, BYSTANDER) < 0.5
    held.pop().writer.close()
    await asyncio.sleep(0.2)
    assert await health_s(gw, ATTACKER) < 0.5
    for conn in held:
        conn.writer.close()


async def test_total_cap_refuses_with_503(gateways: Any) -> None:
    gw = gateways(
        {"GATEWAY_MAX_CONNECTIONS": "30", "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "20"}
    )
    held = [await Slow.open(gw, f"127.0.0.{10 + i % 2}", "") for i in range(30)]
    excess = await Slow.open(gw, "127.0.0.12", "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert await excess.outcome(within_s=2) in ("HTTP/1.1 503 Service Unavailable", "reset")
    for conn in held:
        conn.writer.close()
    await asyncio.sleep(0.2)
    assert await health_s(gw, "127.0.0.12") < 0.5


async def test_a_burst_of_connections_waits_in_the_kernel_queue_while_the_loop_is_busy(
    gateways: Any,
) -> None:
    """A loop busy for a moment (here: stopped) while 600 clients connect: the kernel
    completes and queues every handshake (the listen backlog, `LISTEN_BACKLOG`), none
    has its SYN dropped (which a client retries only after a second); once the loop
    runs again, every one is answered."""
    gw = gateways({"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": ""})
    assert gw.proc is not None
    loop = asyncio.get_running_loop()
    socks = [socket.socket() for _ in range(600)]
    gw.proc.send_signal(signal.SIGSTOP)
    try:
        for sock in socks:
            sock.setblocking(False)

        async def connect(sock: socket.socket) -> bool:
            try:
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", gw.port)), 0.5)
            except TimeoutError:
                return False  # its SYN dropped: the accept queue was full
            return True

        connected = await asyncio.gather(*(connect(sock) for sock in socks))
    finally:
        gw.proc.send_signal(signal.SIGCONT)
    assert all(connected), f"{connected.count(False)} of 600 SYNs dropped"
    request = b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    for sock in socks:
        await loop.sock_sendall(sock, request)

    async def answer(sock: socket.socket) -> bytes:
        return await asyncio.wait_for(loop.sock_recv(sock, 12), 10)

    answers = await asyncio.gather(*(answer(sock) for sock in socks))
    for sock in socks:
        sock.close()
    assert {reply[:12] for reply in answers} == {b"HTTP/1.1 200"}


def test_connections_are_kept_below_the_open_files_limit(tmp_path: Path) -> None:
    """With a hard limit it cannot raise, the gateway caps itself below it."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300)); "
        "from gateway.edge.connections import effective_max_connections as m; "
        "print(m(10000), m(100))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.stdout.split() == ["172", "100"]
    assert "GATEWAY_MAX_CONNECTIONS=10000 does not fit the open-files limit (300)" in out.stderr


# -- out of descriptors: one line, not a flood --------------------------------------------
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_accept_errors_are_logged_once_per_interval(gateways: Any, loop: str) -> None:
    """asyncio's accept loop fails (and retries) many times a second once out of
    descriptors: one line per interval says so.  uvloop's (libuv's) closes at once
    what it cannot take, with a descriptor it keeps in reserve, and reports
    nothing: no line then, and no flood either."""
    gw = gateways(
        {
            "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
            "GATEWAY_KEEPALIVE_TIMEOUT_S": "30",
            "GATEWAY_EVENT_LOOP": loop,
        }
    )
    assert gw.proc is not None
    # Lowered under the running process (the cap it chose at start no longer fits).
    resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (200, 200))
    held: list[Slow] = []
    started = time.monotonic()
    for i in range(260):  # past the limit, less than the listen backlog beyond it
        async with asyncio.timeout(2):
            held.append(await Slow.open(gw, f"127.0.1.{i % 200 + 1}", ""))
    await asyncio.sleep(3)  # asyncio retries accepting meanwhile (many times a second)
    assert time.monotonic() - started < 8  # all within one log interval
    log = gw.log()
    assert f"event loop {loop})" in log
    if loop == "asyncio":
        assert "cannot accept connections: Too many open files" in log
        assert log.count("cannot accept connections") == 1
    assert log.count("cannot accept connections") <= 1
    assert "Traceback" not in log and len(log) < 20_000
    for conn in held:
        conn.writer.close()
    # Descriptors free again: the gateway accepts again.
    deadline = time.monotonic() + 5
    while True:
        try:
            # An answer at the timeout's edge is not yet one: try again.
            if await health_s(gw, timeout_s=1) < 1:
                break
        except (aiohttp.ClientError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "the gateway did not accept again within 5 s"
        await asyncio.sleep(0.2)
