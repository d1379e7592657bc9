"""Liveness (`/health`) and readiness (`/ready`).

`/health` answers as long as the event loop runs.  `/ready` checks what a
reply needs (the bus — Redis, when replicas share it —, the store, each
configured upstream's model list) and says which check failed, with 503, so
a load balancer stops sending traffic to a replica that cannot serve it.

A load balancer should ask `/ready?upstreams=0`: the bus and the store only.
An upstream model server that is down is down for every replica, and taking
them all out of rotation would turn each flavour's clear 502 into a proxy's
bare one.

Anyone may ask, so anyone gets only "ok" or "failed" per check, the model
servers named by their place in OPENAI_API_BASE_URLS (`upstream 1`, …); an
admin's token (header or cookie) adds what failed and the masked URLs.  The
checks run once for everyone asking at the same time and their result is kept
for `READY_CACHE_S`, so a flood of `/ready` costs the model servers one probe
every few seconds, not one per call (SECURITY.md, "What errors and health
checks reveal").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.context import Gateway, gateway_of
from gateway.edge import redact
from gateway.edge.auth import find_token
from gateway.edge.proxy import prefix
from gateway.errors import GatewayError
from gateway.upstream import Upstream

READY_CHECK_TIMEOUT_S = 5.0
# How long one round of checks answers every `/ready` (a few seconds: a load
# balancer still sees a failure within its own interval).
READY_CACHE_S = 2.0
FAILED = "failed"


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


@dataclass(frozen=True, slots=True)
class Checked:
    """One round of checks: each check's "ok" or what failed, unmasked."""

    checks: dict[str, str]
    upstreams: dict[str, str]  # check name → the server's (unmasked) name
    at: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return all(result == "ok" for result in self.checks.values())


class Readiness:
    """The checks, run once for every caller waiting at the same time (single-flight)
    and their result kept for `ttl_s`; a result per kind (with or without upstreams)."""

    def __init__(self, ttl_s: float = READY_CACHE_S) -> None:
        self._ttl_s = ttl_s
        self._results: dict[bool, Checked] = {}
        self._running: dict[bool, asyncio.Task[Checked]] = {}

    async def checked(self, gateway: Gateway, upstreams: bool) -> Checked:
        cached = self._results.get(upstreams)
        if cached is not None and time.monotonic() - cached.at < self._ttl_s:
            return cached
        task = self._running.get(upstreams)
        if task is None:
            task = asyncio.get_running_loop().create_task(_check(gateway, upstreams))
            self._running[upstreams] = task
            task.add_done_callback(lambda done: self._finished(upstreams, done))
        # Shielded: a caller that goes away does not cancel the others' round.
        return await asyncio.shield(task)

    def _finished(self, upstreams: bool, task: asyncio.Task[Checked]) -> None:
        self._running.pop(upstreams, None)
        if not task.cancelled() and task.exception() is None:
            self._results[upstreams] = task.result()


READINESS = web.AppKey("readiness", Readiness)


async def _check(gateway: Gateway, with_upstreams: bool) -> Checked:
    checks: dict[str, str] = {"bus": gateway.hub.bus.problem() or "ok"}
    try:
        await asyncio.wait_for(gateway.store.ping(), READY_CHECK_TIMEOUT_S)
        checks["store"] = "ok"
    except Exception as exc:  # any failure of the database is "not ready"
        checks["store"] = str(exc) or type(exc).__name__
    upstreams = gateway.router.upstreams if with_upstreams else []
    names = {f"upstream {index}": u.name for index, u in enumerate(upstreams, start=1)}
    # All at once: one hanging server costs one timeout, not one per server.
    results = await asyncio.gather(*(_probe(upstream) for upstream in upstreams))
    checks.update(zip(names, results, strict=True))
    return Checked(checks, names)


async def _probe(upstream: Upstream) -> str:
    try:
        await asyncio.wait_for(upstream.list_models(), READY_CHECK_TIMEOUT_S)
    except (GatewayError, TimeoutError) as exc:
        return str(exc) or "timed out"
    return "ok"


async def ready(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    token = find_token(request.headers, request.cookies)
    # A token offered must be good (401 otherwise); only an admin's shows details.
    admin = token is not None and (await gateway.authenticator.authenticate(token)).is_admin
    result = await request.app[READINESS].checked(gateway, request.query.get("upstreams") != "0")
    body: dict[str, object] = {"ready": result.ready}
    if admin:
        body["checks"] = {name: redact.text(value) for name, value in result.checks.items()}
        body["upstreams"] = {name: redact.url(url) for name, url in result.upstreams.items()}
    else:
        body["checks"] = {
            name: "ok" if value == "ok" else FAILED for name, value in result.checks.items()
        }
    return web.json_response(body, status=200 if result.ready else 503)


def add_routes(app: web.Application) -> None:
    app[READINESS] = Readiness()
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
