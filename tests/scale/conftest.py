"""What the scale tests share: replicas on one Redis and one PostgreSQL, as
processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess
from tests.services import fresh_pg_database


@pytest.fixture
async def cluster(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[Callable[..., GatewayProcess]]:
    """`start(name, redis_url=...)`: a replica sharing one database and one key prefix."""
    started: list[GatewayProcess] = []
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    async with fresh_pg_database() as database_url:

        def start(
            name: str,
            redis_url: str = "redis://127.0.0.1:6379/0",
            extra: dict[str, str] | None = None,
        ) -> GatewayProcess:
            env = {
                **(extra or {}),
                "OPENAI_API_BASE_URL": fake_upstream.url,
                "WEBSOCKET_MANAGER": "redis",
                "REDIS_URL": redis_url,
                "GATEWAY_REDIS_KEY_PREFIX": prefix,
                "DATABASE_URL": database_url,
                "GATEWAY_CHECKPOINT_INTERVAL_S": "0.2",
            }
            proc = GatewayProcess(tmp_path / name, env).start()
            started.append(proc)
            return proc

        yield start
        for proc in started:
            proc.stop()
