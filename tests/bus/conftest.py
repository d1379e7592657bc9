from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.bus.support import SHARED_URL, Make, Replica
from tests.services import RedisServer


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def replica(prefix: str) -> AsyncIterator[Make]:
    """`await replica(url=..., **RedisRooms options)`: a started replica, closed at the end."""
    made: list[Replica] = []

    async def make(url: str = SHARED_URL, **options: Any) -> Replica:
        one = Replica(url, prefix, **options)
        made.append(one)
        return await one.start()

    try:
        yield make
    finally:
        for one in made:
            if not one.crashed:
                await one.close()
        # Our own keys on the shared server (a private one goes away whole).
        client = aioredis.Redis.from_url(SHARED_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared server, to publish what no replica would."""
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        yield client
    finally:
        await client.aclose()
