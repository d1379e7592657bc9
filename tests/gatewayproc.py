"""Run `python -m gateway serve` as a real process for a test, on a free port (or,
where a test must see the server's own objects, the app served in the test's
process: `served_in_process`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
from aiohttp import web

from tests.fakes.upstream import free_port

SECRET = "test-secret-key-for-the-gateway-tests"


@asynccontextmanager
async def served_in_process(app: web.Application) -> AsyncIterator[str]:
    """`app` served on a free loopback port in this process: its base URL."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def make_token(
    user_id: str, secret: str = SECRET, ttl_s: int | None = 3600, **claims: object
) -> str:
    payload: dict[str, object] = {"id": user_id, **claims}
    if ttl_s is not None:
        payload["exp"] = int(time.time()) + ttl_s
    return jwt.encode(payload, secret, algorithm="HS256")


# Every gateway log file of the run, for the log scan (`tests/logscan.py`).
LOG_FILES: list[Path] = []


class GatewayProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        # `wrapper`: a command prefix the gateway runs under (e.g. one that lowers a limit).
        self.wrapper = list(wrapper)
        self.port = free_port()
        # Where clients reach it: under GATEWAY_BASE_PATH when one is set.
        base_path = (env or {}).get("GATEWAY_BASE_PATH", "")
        under = base_path.rstrip("/") if base_path.startswith("/") else ""
        self.url = f"http://127.0.0.1:{self.port}{under}"
        self.data_dir = data_dir
        self.log_path = data_dir / f"gateway-{self.port}.log"
        self.env = {
            "DATA_DIR": str(data_dir),
            "WEBUI_SECRET_KEY": SECRET,
            "GATEWAY_DEMO_TOKEN_DELAY_S": "0.001",
            "GATEWAY_LOG_LEVEL": "INFO",
            # A test's teardown waits for no reply it left running (tests of the
            # grace itself set their own).
            "GATEWAY_SHUTDOWN_GRACE_S": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "GATEWAY_", "WEBUI_"))
        }
        env.update(self.env)
        LOG_FILES.append(self.log_path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def troubles_since(self, offset: int) -> list[str]:
        """The log's ERROR and traceback lines past `offset` (a `len(log())` taken before)."""
        return [
            line
            for line in self.log()[offset:].splitlines()
            if "Traceback" in line or " ERROR " in line
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
