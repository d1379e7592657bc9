"""permessage-deflate on WebSockets: off unless GATEWAY_WEBSOCKET_COMPRESSION (each
connection would keep two zlib contexts, about 120 KB, for frames of a few dozen
bytes: bench/bench_deflate.py), on both the raw WebSocket and Socket.IO paths."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import websockets

from tests.gatewayproc import GatewayProcess, make_token


async def negotiated(gw: GatewayProcess) -> dict[str, str | None]:
    """The extensions each path answered a browser-like offer of permessage-deflate with."""
    token = make_token(f"deflate-{uuid.uuid4().hex[:6]}")
    base = f"ws://127.0.0.1:{gw.port}"
    answered: dict[str, str | None] = {}
    paths = {
        "nadoo": f"/ws/chat/s-{uuid.uuid4().hex[:6]}?token={token}",
        "socketio": "/ws/socket.io/?EIO=4&transport=websocket",
    }
    for name, path in paths.items():
        # websockets offers permessage-deflate by default, as browsers do.
        async with websockets.connect(base + path) as ws:
            await ws.recv()  # the first frame: the greeting or Engine.IO's open packet
            answered[name] = ws.response.headers.get("Sec-WebSocket-Extensions")
    return answered


@pytest.mark.parametrize("setting", [None, "false", "true"])
async def test_compression_is_off_unless_turned_on(start_gateway: Any, setting: str | None) -> None:
    env = {} if setting is None else {"GATEWAY_WEBSOCKET_COMPRESSION": setting}
    gw: GatewayProcess = start_gateway(env)
    answered = await negotiated(gw)
    for path, extensions in answered.items():
        if setting == "true":
            assert extensions is not None and "permessage-deflate" in extensions, answered
        else:
            assert extensions is None, (path, answered)
