"""Real services for the tests that need their own: a fresh PostgreSQL database, and a
Redis server of the test's own (on a free port) that the test may kill and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import redis

from tests.fakes.upstream import free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new, empty database on the local server, dropped afterwards."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """`fresh_pg_database` for fixtures that live longer than one test (no loop there)."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class RedisServer:
    """`redis-server` on a free port, nothing on disk; `stop()` kills it, `start()` again
    brings it back, empty, on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed (Debian package redis-server)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class PostgresServer:
    """A PostgreSQL cluster of the test's own (Debian's binaries, trust auth, a free
    port, its files in a directory of its own under /tmp), which the test may stop
    and start again; run as the `postgres` user when the tests run as root
    (PostgreSQL refuses root).  `remove()` deletes it."""

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user could not reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert versions, "PostgreSQL's binaries are needed (Debian package postgresql)"
        self.bin = versions[-1].parent

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        log = str(self.directory / "log")  # the server's output (never our pipes)
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "30", "start")
        return self

    def stop(self) -> None:
        """At once, as a crash or a restart does (`-m immediate`)."""
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
