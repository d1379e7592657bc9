"""Liveness (`/health`) and readiness (`/ready`).

`/health` answers as long as the event loop runs.  `/ready` checks what a
reply needs (the bus — Redis, when replicas share it —, the store, each
configured upstream's model list) and says which check failed, with 503, so
a load balancer stops sending traffic to a replica that cannot serve it.

A load balancer should ask `/ready?upstreams=0`: the bus and the store only.
An upstream model server that is down is down for every replica, and taking
them all out of rotation would turn each flavour's clear 502 into a proxy's
bare one.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.context import gateway_of
from gateway.errors import GatewayError
from gateway.proxy import prefix

READY_CHECK_TIMEOUT_S = 5.0


async def index(request: web.Request) -> web.Response:
    """What answers here, for whoever opens the gateway's address (behind a
    sub-path: where the proxy's redirect to `/chat/` lands)."""
    at = prefix(request, gateway_of(request).settings.base_path)
    return web.json_response(
        {
            "name": "chat gateway",
            "health": f"{at}/health",
            "ready": f"{at}/ready",
            "openai": f"{at}/v1",
            "openwebui_socketio_path": f"{at}/ws/socket.io",
            "ragflow": f"{at}/ragflow",
            "ragflow_websocket": f"{at}/v1/ws/chat",
            "nadoo_websocket": f"{at}/ws/chat/{{session_id}}",
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": True})


async def ready(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    checks: dict[str, str] = {"bus": gateway.hub.bus.problem() or "ok"}
    try:
        await asyncio.wait_for(gateway.store.ping(), READY_CHECK_TIMEOUT_S)
        checks["store"] = "ok"
    except Exception as exc:  # any failure of the database is "not ready"
        checks["store"] = str(exc) or type(exc).__name__
    upstreams = gateway.router.upstreams if request.query.get("upstreams") != "0" else []
    for upstream in upstreams:
        try:
            await asyncio.wait_for(upstream.list_models(), READY_CHECK_TIMEOUT_S)
            checks[f"upstream {upstream.name}"] = "ok"
        except (GatewayError, TimeoutError) as exc:
            checks[f"upstream {upstream.name}"] = str(exc) or "timed out"
    is_ready = all(result == "ok" for result in checks.values())
    return web.json_response({"ready": is_ready, "checks": checks}, status=200 if is_ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
