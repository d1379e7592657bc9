"""Event streams (`/api/v1/events`) on a stopping replica: ended at once, each
body whole, so EventSource reconnects (through the balancer, elsewhere) and the
shutdown does not wait for them; one asked for after that gets 503, as does a
raw WebSocket.  On the real
app served in-process (the stop is `drain`, what SIGTERM runs:
`tests/api/test_graceful_stop.py` has the signal)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.app import build_app, drain
from gateway.errors import SERVER_STOPPING
from gateway.settings import Settings
from tests.gatewayproc import SECRET, make_token, served_in_process


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[web.Application, str]]:
    app = build_app(Settings(data_dir=tmp_path, secret_key=SECRET))
    async with served_in_process(app) as base:
        yield app, base


async def test_event_streams_end_whole_when_the_replica_stops(
    served: tuple[web.Application, str],
) -> None:
    app, base = served
    headers = {"Authorization": f"Bearer {make_token('stopping-user')}"}
    async with aiohttp.ClientSession() as http:
        fresh = await http.get(f"{base}/api/v1/events", headers=headers)
        resumed = await http.get(f"{base}/api/v1/events", headers={**headers, "Last-Event-ID": "0"})
        assert (fresh.status, resumed.status) == (200, 200)
        reads = [asyncio.ensure_future(stream.read()) for stream in (fresh, resumed)]
        await asyncio.sleep(0.1)
        assert not any(read.done() for read in reads)  # open, nothing to send
        await drain(app, 0)
        # Whole bodies (a cut one raises ClientPayloadError), at once.
        bodies = await asyncio.wait_for(asyncio.gather(*reads), 2)
        assert bodies == [b"", b""]
        async with http.get(f"{base}/api/v1/events", headers=headers) as late:
            assert late.status == 503
            assert SERVER_STOPPING in await late.text()
        # Nor a raw WebSocket: nothing would close it, and the exit would wait for it.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/ws/chat/late?token={make_token('stopping-user')}")
        assert refused.value.status == 503
