"""Sign-up and sign-in abuse (issue 13: holes 2, 3 and part of 8), each attack run as it
was reported against a real gateway process, and shown refused.

SECURITY.md, section "Sign-up and sign-in", says what the gateway decides and why.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.edge.throttle import SignInThrottle, address_key
from gateway.errors import RateLimited
from gateway.store import DuplicateKey, UserRecord, open_store
from tests.gatewayproc import SECRET, GatewayProcess
from tests.services import fresh_pg_database

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[2]


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(url, json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None), resp


async def signup(http: aiohttp.ClientSession, gw: GatewayProcess, email: str) -> dict[str, Any]:
    status, session, _ = await post(
        http, f"{gw.url}/api/v1/auths/signup", {"email": email, "password": PASSWORD}
    )
    assert status == 200, session
    return dict(session)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


# -- 2: the first user, and only the first, is admin --------------------------------------
async def stored_roles(database_url: str, data_dir: Path) -> list[str]:
    if database_url:
        conn = await asyncpg.connect(database_url)
        try:
            return sorted(row[0] for row in await conn.fetch("SELECT role FROM users"))
        finally:
            await conn.close()
    with closing(sqlite3.connect(data_dir / "gateway.db")) as db:
        return sorted(row[0] for row in db.execute("SELECT role FROM users"))


async def racing_posts(
    gw: GatewayProcess, path: str, bodies: list[dict[str, Any]]
) -> list[tuple[int, Any]]:
    """POSTs that reach the gateway together, as a racer sends them: each request is
    written but for its last byte, then every last byte at once (so the race does not
    depend on how fast this machine happens to open connections)."""
    streams = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in bodies]
    prefix = gw.url.split(str(gw.port), 1)[1]
    for (_, writer), body in zip(streams, bodies, strict=True):
        data = json.dumps(body).encode()
        writer.write(
            f"POST {prefix}{path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data[:-1]
        )
        await writer.drain()
    await asyncio.sleep(0.2)
    for (_, writer), body in zip(streams, bodies, strict=True):
        writer.write(json.dumps(body).encode()[-1:])
    results = []
    for reader, writer in streams:
        head, _, payload = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
        results.append((int(head.split(b" ", 2)[1]), json.loads(payload)))
    return results


@pytest.mark.parametrize("enable_signup", [True, False], ids=["signup-on", "signup-off"])
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_concurrent_signups_make_exactly_one_admin(
    start_gateway: Any, database: str, enable_signup: bool
) -> None:
    async with AsyncExitStack() as stack:
        database_url = (
            await stack.enter_async_context(fresh_pg_database()) if database == "postgresql" else ""
        )
        gw: GatewayProcess = start_gateway(
            {"ENABLE_SIGNUP": str(enable_signup).lower(), "DATABASE_URL": database_url}
        )
        results = await racing_posts(
            gw,
            "/api/v1/auths/signup",
            [{"email": f"racer{i}@example.com", "password": PASSWORD} for i in range(20)],
        )
        roles = await stored_roles(database_url, gw.data_dir)
        gw.stop()
    made = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status != 200]
    assert [session["role"] for session in made].count("admin") == 1
    if enable_signup:
        assert len(made) == 20 and roles == ["admin"] + ["user"] * 19
    else:
        assert len(made) == 1 and roles == ["admin"]
        assert [status for status, _ in results].count(403) == 19
        assert all("disabled" in body["detail"] for body in refused)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_store_makes_one_first_admin_under_concurrency(
    database: str, tmp_path: Path
) -> None:
    """The store's decision alone, 20 at once (on PostgreSQL over its pool of 10)."""
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_pg_database()) if database != "sqlite" else ""
        store = await open_store(url, tmp_path)
        try:

            def user(i: int) -> UserRecord:
                return UserRecord(
                    f"u{i}", f"u{i}", f"u{i}@example.com", "user", None, "/", 1, 1, {}
                )

            made = await asyncio.gather(
                *(store.create_user_first_admin(user(i), only_first=True) for i in range(20))
            )
            assert [m.role for m in made if m is not None] == ["admin"]
            made = await asyncio.gather(
                *(store.create_user_first_admin(user(i)) for i in range(20, 40))
            )
            assert [m is not None and m.role for m in made] == ["user"] * 20
            assert [u.role for u in await store.list_users()].count("admin") == 1
            with pytest.raises(DuplicateKey):
                await store.create_user_first_admin(user(20))
        finally:
            await store.close()


# -- 3: password hashing off the event loop, failures throttled ---------------------------
@asynccontextmanager
async def flood(
    gw: GatewayProcess, seconds: float, mode: str, emails: list[str], clients: int = 30
) -> AsyncIterator[dict[str, Any]]:
    """The attacker, in a process of its own; the dict is filled with its tally at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.flood",
        gw.url,
        str(seconds),
        str(clients),
        mode,
        *emails,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    tally: dict[str, Any] = {}
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.strip() == b"started", first
        yield tally
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        assert proc.returncode == 0
        tally.update(json.loads(out.decode().strip().splitlines()[-1]))
        tally["statuses"] = {int(k): v for k, v in tally["statuses"].items()}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def probe(
    http: aiohttp.ClientSession, gw: GatewayProcess, token: str, seconds: float
) -> list[float]:
    """Another client's /v1/models, back to back: the latency of each answer."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        async with http.get(
            f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
            await resp.read()
        latencies.append(time.monotonic() - began)
    return latencies


async def test_sign_in_flood_from_one_address_is_throttled_and_stalls_no_one(
    start_gateway: Any,
) -> None:
    gw: GatewayProcess = start_gateway()
    async with aiohttp.ClientSession() as http:
        victim = await signup(http, gw, "victim@example.com")
        await signup(http, gw, "bystander@example.com")
        # Every other guess at the victim, the rest at e-mails no one has.
        guesses = [e for i in range(12) for e in ("victim@example.com", f"nobody{i}@example.com")]
        async with flood(gw, 4.0, "one-address", guesses) as tally:
            latencies = await probe(http, gw, victim["token"], 3.0)
            # Someone elsewhere signs in meanwhile: the flood's address is throttled, not the site.
            elsewhere = {"X-Forwarded-For": "192.0.2.10"}
            bystander = await post(
                http,
                f"{gw.url}/api/v1/auths/signin",
                {"email": "bystander@example.com", "password": PASSWORD},
                elsewhere,
            )
            # The account under attack waits out its lock even with the right password,
            # or the attacker would learn when a guess was right.
            locked = await post(
                http,
                f"{gw.url}/api/v1/auths/signin",
                {"email": "victim@example.com", "password": PASSWORD},
                elsewhere,
            )
    print(f"probe: {len(latencies)} answers, p99 {p99(latencies) * 1000:.1f} ms; flood {tally}")
    assert len(latencies) >= 100 and p99(latencies) < 0.25
    statuses = tally["statuses"]
    assert set(statuses) == {400, 429}
    # The address's 20 failures a minute were checked (the victim's 5 among them), no more
    # even with 30 under way at once; the rest were refused at once, told to wait.
    assert statuses[400] == 20 and statuses[429] > 100
    assert tally["missing_retry_after"] == 0 and tally["retry_after"][0] >= 1
    assert 50 <= tally["retry_after"][1] <= 60
    assert "Too many failed sign-in attempts" in tally["sample"]["429"]["detail"]
    assert bystander[0] == 200
    status, body, resp = locked
    assert status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "Too many failed sign-in attempts" in body["detail"]


async def test_sign_in_flood_from_many_addresses_is_bounded_by_the_hash_pool(
    start_gateway: Any,
) -> None:
    """A botnet: every attempt from its own address, and (a per-account limit raised
    here to stand for an attacker spreading over many accounts) no throttle bites.
    The hashes still run beside the event loop, and past the pool's queue the flood
    is told to come back later instead of waiting in an ever longer line."""
    gw: GatewayProcess = start_gateway(
        {
            "GATEWAY_PASSWORD_HASH_THREADS": "1",
            "GATEWAY_PASSWORD_HASH_MAX_WAITING": "4",
            "GATEWAY_SIGNIN_MAX_FAILURES_PER_ACCOUNT": "100000",
        }
    )
    async with aiohttp.ClientSession() as http:
        user = await signup(http, gw, "user@example.com")
        emails = ["user@example.com", "nobody@example.com"]
        async with flood(gw, 4.0, "many-addresses", emails) as tally:
            latencies = await probe(http, gw, user["token"], 3.0)
    print(f"probe: {len(latencies)} answers, p99 {p99(latencies) * 1000:.1f} ms; flood {tally}")
    # Fewer than above: the hash thread keeps a core busy throughout, and on a small
    # machine the flood's own process shares the other (5 answers before the fix).
    assert len(latencies) >= 50 and p99(latencies) < 0.25
    statuses = tally["statuses"]
    assert set(statuses) == {400, 503} and statuses[400] > 0
    assert tally["missing_retry_after"] == 0 and tally["retry_after"][0] >= 1
    assert "busy" in tally["sample"]["503"]["detail"]


async def test_unknown_emails_take_as_long_as_known_ones(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway(
        {
            # Thirty failures from here on purpose: this test measures, it does not attack.
            "GATEWAY_SIGNIN_MAX_FAILURES_PER_ACCOUNT": "1000",
            "GATEWAY_SIGNIN_MAX_FAILURES_PER_ADDRESS": "1000",
        }
    )
    url = f"{gw.url}/api/v1/auths/signin"
    known: list[float] = []
    unknown: list[float] = []
    async with aiohttp.ClientSession() as http:
        await signup(http, gw, "known@example.com")
        for i in range(16):
            for email, times in (
                ("known@example.com", known),
                (f"nobody{i}@example.com", unknown),
            ):
                began = time.monotonic()
                status, _, _ = await post(http, url, {"email": email, "password": "wrong guess"})
                times.append(time.monotonic() - began)
                assert status == 400
    # The first pair warms up (connections, caches).
    m_known, m_unknown = statistics.median(known[1:]), statistics.median(unknown[1:])
    print(f"median sign-in: known {m_known * 1000:.1f} ms, unknown {m_unknown * 1000:.1f} ms")
    assert m_known > 0.005  # the password really is hashed (scrypt: tens of ms)
    assert 0.7 * m_known <= m_unknown <= 1.5 * m_known


# -- 8 (part): a minimum password length ---------------------------------------------------
def run_cli(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={
            "PATH": "/usr/bin:/bin",
            "DATA_DIR": str(data),
            "WEBUI_SECRET_KEY": SECRET,
            **(env or {}),
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


async def test_short_passwords_are_refused_everywhere(start_gateway: Any, tmp_path: Path) -> None:
    gw: GatewayProcess = start_gateway()
    base = f"{gw.url}/api/v1/auths"
    async with aiohttp.ClientSession() as http:
        for short in ("x", "1234567"):
            status, body, _ = await post(
                http, f"{base}/signup", {"email": "a@example.com", "password": short}
            )
            assert status == 400 and "at least 8 characters" in body["detail"], body
        status, admin, _ = await post(
            http, f"{base}/signup", {"email": "a@example.com", "password": "12345678"}
        )
        assert status == 200 and admin["role"] == "admin"
        status, body, _ = await post(
            http,
            f"{base}/add",
            {"email": "b@example.com", "password": "x", "role": "user"},
            {"Authorization": f"Bearer {admin['token']}"},
        )
        assert status == 400 and "at least 8 characters" in body["detail"], body

    data = tmp_path / "cli"
    refused = run_cli(data, "users", "add", "--email", "c@example.com", "--password", "x")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "at least 8 characters" in refused.stderr
    stricter = run_cli(
        data,
        "users",
        "add",
        "--email",
        "c@example.com",
        "--password",
        "eleven char",
        env={"GATEWAY_PASSWORD_MIN_CHARS": "12"},
    )
    assert stricter.returncode == 1 and "at least 12 characters" in stricter.stderr
    assert "c@example.com" not in run_cli(data, "users", "list").stdout
    added = run_cli(data, "users", "add", "--email", "c@example.com", "--password", "12345678")
    assert added.returncode == 0 and "\tadmin" in added.stdout, added.stderr


# -- the throttle's arithmetic, on a clock the test turns (minutes in a blink) ------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(throttle: SignInThrottle, email: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        throttle.admit(email, address).failed()


def refused_for(throttle: SignInThrottle, email: str, address: str) -> int:
    with pytest.raises(RateLimited) as refused:
        throttle.admit(email, address)
    assert refused.value.retry_after_s is not None
    return int(refused.value.retry_after_s)


def test_locks_double_up_to_the_cap_and_are_forgotten() -> None:
    clock = Clock()
    throttle = SignInThrottle(5, 20, window_s=60, max_lockout_s=900, clock=clock)
    # 60 s, then 120, 240, 480, and 900 at most, for the account whoever asks.
    for lock in (60, 120, 240, 480, 900, 900):
        fail(throttle, "Victim@example.com", f"192.0.2.{lock % 250}", 5)
        assert refused_for(throttle, "victim@example.com", "198.51.100.1") == lock
        clock.now += lock
    # Failures spread wider than the window never lock.
    for _ in range(10):
        fail(throttle, "slow@example.com", "192.0.2.1", 4)
        clock.now += 61
    throttle.admit("slow@example.com", "192.0.2.1").succeeded()
    # A quiet spell as long as the longest lock: the doubling starts over.
    clock.now += 901
    fail(throttle, "victim@example.com", "192.0.2.1", 5)
    assert refused_for(throttle, "victim@example.com", "192.0.2.1") == 60
    # A success clears the account's count, not the address's.
    clock.now += 60
    fail(throttle, "victim@example.com", "203.0.113.5", 4)
    throttle.admit("victim@example.com", "203.0.113.5").succeeded()
    fail(throttle, "victim@example.com", "203.0.113.5", 4)  # admitted: 4 since the success
    for i in range(12):
        fail(throttle, f"other{i}@example.com", "203.0.113.5")
    assert refused_for(throttle, "someone@example.com", "203.0.113.5") == 60


def test_an_address_is_throttled_whatever_the_email_and_ipv6_by_its_64() -> None:
    clock = Clock()
    throttle = SignInThrottle(5, 20, window_s=60, max_lockout_s=900, clock=clock)
    for i in range(20):
        throttle.admit(f"guess{i}@example.com", f"2001:db8:1:2::{i:x}").failed()
    assert refused_for(throttle, "new@example.com", "2001:db8:1:2:ffff::1") == 60
    throttle.admit("new@example.com", "2001:db8:1:3::1").failed()  # another /64
    # Attempts under way count: 5 at once fill an account's limit, the 6th waits.
    attempts = [throttle.admit("busy@example.com", f"198.51.100.{i}") for i in range(5)]
    assert refused_for(throttle, "busy@example.com", "198.51.100.9") == 1
    for attempt in attempts:
        attempt.abandoned()
    throttle.admit("busy@example.com", "198.51.100.9")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7" and address_key(None) == "?"
