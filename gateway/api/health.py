"""Liveness (`/health`), the database (`/health/db`), readiness (`/ready`) and the
Prometheus metrics (`/metrics`, declared in `edge/metrics.py`).

`/health` answers as long as the event loop runs (a liveness probe: restart a
replica whose loop is stuck).  `/health/db` is Open WebUI's name for "the
database answers": `{"status": true}`, or 503 `{"status": false}`.  `/ready` checks what a
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

import hmac

from aiohttp import web

from gateway.application.keys import AUTHENTICATOR, READINESS, SETTINGS
from gateway.edge import metrics, redact
from gateway.edge.auth import find_token
from gateway.edge.proxy import prefix
from gateway.webui.serving import index_note

FAILED = "failed"


async def index(request: web.Request) -> web.Response:
    """What answers here, for whoever opens the gateway's address (behind a
    sub-path: where the proxy's redirect to `/chat/` lands)."""
    at = prefix(request, request.app[SETTINGS].base_path)
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
            "web_app": index_note(request),
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": True})


async def health_db(request: web.Request) -> web.Response:
    result = await request.app[READINESS].checked(False)
    ok = result.checks.get("store") == "ok"
    return web.json_response({"status": ok}, status=200 if ok else 503)


async def ready(request: web.Request) -> web.Response:
    token = find_token(request.headers, request.cookies)
    # A token offered must be good (401 otherwise); only an admin's shows details.
    admin = token is not None and (await request.app[AUTHENTICATOR].authenticate(token)).is_admin
    result = await request.app[READINESS].checked(request.query.get("upstreams") != "0")
    body: dict[str, object] = {"ready": result.ready}
    if admin:
        body["checks"] = {name: redact.text(value) for name, value in result.checks.items()}
        body["upstreams"] = {name: redact.url(url) for name, url in result.upstreams.items()}
    else:
        body["checks"] = {
            name: "ok" if value == "ok" else FAILED for name, value in result.checks.items()
        }
    return web.json_response(body, status=200 if result.ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus's text format; behind `GATEWAY_METRICS_TOKEN` when one is set
    (compared in constant time: a guess learns nothing from how long it took)."""
    expected = request.app[SETTINGS].metrics_token
    if expected:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return web.json_response(
                {"detail": "Send 'Authorization: Bearer <GATEWAY_METRICS_TOKEN>'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    body, content_type = metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    if app[SETTINGS].metrics:
        app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/health/db", health_db)
    app.router.add_get("/ready", ready)
