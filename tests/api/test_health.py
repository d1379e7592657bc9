"""The health endpoints under the names orchestrators and Open WebUI users look
for: `/health` (the loop runs), `/health/db` (the database answers), `/ready`
(everything a reply needs); and the container's health check asks the right one."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from tests.fakes.upstream import free_port
from tests.gatewayproc import GatewayProcess
from tests.services import PG_ADMIN, fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return resp.status, await resp.json()


async def test_health_and_health_db_on_the_embedded_database(gateway: GatewayProcess) -> None:
    assert await get(f"{gateway.url}/health") == (200, {"status": True})
    assert await get(f"{gateway.url}/health/db") == (200, {"status": True})


async def test_a_database_gone_is_503_on_health_db_and_ready_while_health_stays(
    start_gateway: Any,
) -> None:
    async with fresh_pg_database() as database_url:
        gw = start_gateway({"DATABASE_URL": database_url})
        assert await get(f"{gw.url}/health/db") == (200, {"status": True})
        name = database_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        deadline = time.monotonic() + 15
        while (found := await get(f"{gw.url}/health/db")) != (503, {"status": False}):
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.5)  # the result is kept 2 s (READY_CACHE_S)
        status, ready = await get(f"{gw.url}/ready?upstreams=0")
        assert status == 503 and ready["checks"]["store"] == "failed"
        assert await get(f"{gw.url}/health") == (200, {"status": True})


def test_the_containers_health_check_asks_for_readiness_without_the_model_servers() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (.*)", dockerfile)
    assert check is not None and "/ready?upstreams=0" in check.group(1)
    compose = (ROOT / "docker-compose.yml").read_text()
    assert compose.count("/ready?upstreams=0") >= 1


def _health_checks() -> list[str]:
    """The Python of the Dockerfile's HEALTHCHECK and of the compose file's."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.findall(r'CMD python -c "([^"]+)"', dockerfile)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            found.append(test[3])
    return found


@pytest.mark.parametrize("base_path", ["", "/chat"])
def test_the_containers_health_check_follows_the_port_and_base_path(
    base_path: str, start_gateway: Any
) -> None:
    """Run as the container runs it, with the container's settings: a gateway on
    another port, under a base path, is found; one that is not there fails."""
    gw = start_gateway({"GATEWAY_BASE_PATH": base_path} if base_path else None)
    checks = _health_checks()
    assert len(checks) >= 2, checks  # the image's, and each gateway service's
    for code in checks:
        env = {"PATH": os.environ["PATH"], "GATEWAY_PORT": str(gw.port)}
        if base_path:
            env["GATEWAY_BASE_PATH"] = "/" + base_path + "/"  # ("//chat/": the settings' /chat)
        ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        env["GATEWAY_PORT"] = str(free_port())
        down = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        )
        assert down.returncode != 0
