"""Liveness (`/health`) and readiness (`/ready`).

`/health` answers as long as the event loop runs.  `/ready` checks what a
reply needs (the bus — Redis, when replicas share it —, the store, each
configured upstream's model list) and says which check failed, with 503, so
a load balancer stops sending traffic to a replica that cannot serve it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.context import gateway_of
from gateway.errors import GatewayError

READY_CHECK_TIMEOUT_S = 5.0


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
    for upstream in gateway.router.upstreams:
        try:
            await asyncio.wait_for(upstream.list_models(), READY_CHECK_TIMEOUT_S)
            checks[f"upstream {upstream.name}"] = "ok"
        except (GatewayError, TimeoutError) as exc:
            checks[f"upstream {upstream.name}"] = str(exc) or "timed out"
    is_ready = all(result == "ok" for result in checks.values())
    return web.json_response({"ready": is_ready, "checks": checks}, status=200 if is_ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
