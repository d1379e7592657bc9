"""Assembles the aiohttp application from settings.

Every long-lived resource is opened and closed with the app by a cleanup
context of its own, in order — the store, the model servers, the core (the
fan-out, the bus, the chat core), replies, chats, accounts (tokens,
passwords, access), realtime, assistants, readiness, the Socket.IO transport
— and what routes and transports may use is put under the typed keys of
`application/keys.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from gateway.api import health, nadoo, openai, streams, trace
from gateway.api.common import (
    Renderer,
    error_middleware,
    plain_bodies,
    render_detail,
    render_openai,
)
from gateway.api.openwebui import auths, chats, completions, images, tasks, users, webapp
from gateway.api.ragflow import http as ragflow
from gateway.api.ragflow import ws as ragflow_ws
from gateway.application.access import AccessGuard
from gateway.application.accounts import Accounts, StoreDirectory
from gateway.application.assistants import Assistants
from gateway.application.chats import Chats
from gateway.application.health import Readiness
from gateway.application.keys import (
    ACCOUNTS,
    ASSISTANTS,
    AUTHENTICATOR,
    CHATS,
    ORIGINS,
    READINESS,
    REALTIME,
    REPLIES,
    SETTINGS,
)
from gateway.application.realtime import Realtime
from gateway.application.replies import Replies
from gateway.bus import Replicas
from gateway.bus.make import make_bus, make_journal, make_locks
from gateway.chat.background import Background
from gateway.chat.service import ChatService
from gateway.edge import access
from gateway.edge.auth import Authenticator
from gateway.edge.connections import SERVER_HEADER, body_deadline
from gateway.edge.origins import OriginPolicy
from gateway.edge.passwords import Passwords
from gateway.edge.proxy import ProxyPolicy, prefix
from gateway.edge.secrets import load_or_create_secret
from gateway.edge.throttle import SignInThrottle
from gateway.edge.trace import Traces
from gateway.errors import WS_GOING_AWAY
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence
from gateway.settings import Settings
from gateway.store import Store, open_store
from gateway.transports import socketio
from gateway.transports.socketio import SOCKETIO, SocketIOTransport
from gateway.transports.websocket_pings import PINGS, Pings
from gateway.upstream import Upstream
from gateway.upstream.demo import DemoUpstream
from gateway.upstream.openai import OpenAIUpstream
from gateway.upstream.router import ModelRouter
from gateway.webui import serving as webui

log = logging.getLogger(__name__)


def secret_key(settings: Settings) -> str:
    return settings.secret_key or load_or_create_secret(settings.data_dir)


def build_upstreams(settings: Settings, session: aiohttp.ClientSession) -> list[Upstream]:
    upstreams: list[Upstream] = []
    keys = settings.openai_api_keys
    for index, base_url in enumerate(settings.openai_api_base_urls):
        key = keys[index] if index < len(keys) else ""
        upstreams.append(
            OpenAIUpstream(
                base_url,
                key,
                session,
                settings.upstream_connect_timeout_s,
                settings.upstream_read_timeout_s,
            )
        )
    if settings.demo_model:
        upstreams.append(DemoUpstream(settings.demo_token_delay_s))
    return upstreams


# Errors in the shape of the flavour a path belongs to (the default: Open WebUI's).
ERROR_SHAPES: tuple[tuple[str, Renderer], ...] = (
    ("/ragflow/", ragflow.render_error),
    ("/v1/ws/", render_detail),  # RAGFlow's sockets: not OpenAI's shape
    ("/v1/", render_openai),
)


def build_app(settings: Settings) -> web.Application:
    """The gateway; under `GATEWAY_BASE_PATH` (as a sub-application) when one is set.

    Forwarded headers are read by the outermost application, once, so that
    everything below it (the redirect to the base path included) sees the
    request as the client made it."""
    proxies = ProxyPolicy(settings.trusted_proxies)
    # Each request's id (from a trusted proxy's X-Request-ID, or new): in its log lines.
    outer = [access.request_ids(proxies.trusts), proxies.middleware()]
    if not settings.base_path:
        return _gateway_app(settings, outer)
    root = web.Application(
        client_max_size=settings.max_request_body_bytes,
        middlewares=[
            *outer,
            # A route asked for outside the base path: a 404 that says where it is.
            error_middleware(ERROR_SHAPES, default=render_detail, base_path=settings.base_path),
        ],
    )

    async def to_base_path(request: web.Request) -> web.StreamResponse:
        location = URL(prefix(request, settings.base_path) + "/").with_query(request.query)
        raise web.HTTPMovedPermanently(location)

    # Before the sub-application, which would claim "/chat" too.
    root.router.add_get(settings.base_path, to_base_path)
    gateway = _gateway_app(settings, [])
    root.add_subapp(settings.base_path, gateway)
    root[GATEWAY] = gateway
    root.on_response_prepare.append(_server_header)
    return root


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default names its version and Python's: no one needs to know them.
    response.headers["Server"] = SERVER_HEADER
    await access.send_id(request, response)


# What only this module and the application layer hold: no route or transport
# reads these (they reach the store, the fan-out and the core through the
# services of `gateway/application/keys.py`).
STORE = web.AppKey("store", Store)
ROUTER = web.AppKey("router", ModelRouter)
HUB = web.AppKey("hub", Hub)
REPLICAS: web.AppKey[Replicas] = web.AppKey("replicas")
CORE = web.AppKey("core", ChatService)
ACCESS = web.AppKey("access", AccessGuard)
# Under GATEWAY_BASE_PATH: the gateway's application, below the root's.
GATEWAY = web.AppKey("gateway", web.Application)
# A stopping replica's last replies' ends get this long to reach their sockets.
ENDS_FLUSH_S = 0.3


async def drain(app: web.Application, grace_s: float) -> None:
    """A stopping replica (SIGTERM): not ready from now on, so balancers take it out of
    rotation, while it still serves; returns once no reply runs here, or after
    `grace_s` (what still runs then is stopped by the shutdown and stored as it is)."""
    gateway = app.get(GATEWAY, app)
    core = gateway[CORE]
    gateway[READINESS].drain(core.replies_running)
    if core.replies_running():
        log.info("stopping: waiting for running replies", extra={"replies": core.replies_running()})
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(core.all_replies_ended(), grace_s)
    finally:
        # (also when a second signal cuts the wait short)
        core.stop_pure_replies()
    if running := core.replies_running():
        log.warning(
            "stopping: replies still running after the grace period are stopped",
            extra={"replies": running, "grace_s": grace_s},
        )
    # Stopped (each stored with what it had, its clients told; a pure-API stream
    # ended with an error event, above), then the sockets closed, so nothing holds
    # the shutdown: clients reconnect to another replica.
    await core.replies.shutdown()
    # Their ends are queued for each socket's writer: a moment to send them.
    await asyncio.sleep(ENDS_FLUSH_S)
    await gateway[REALTIME].close_sockets(WS_GOING_AWAY, "server stopping")
    await gateway[SOCKETIO].shutdown()


def _gateway_app(settings: Settings, outer: list[Middleware]) -> web.Application:
    origins = OriginPolicy(settings.cors_allow_origin)
    app = web.Application(
        client_max_size=settings.max_request_body_bytes,
        middlewares=[
            *outer,
            body_deadline(settings.request_body_timeout_s),
            origins.middleware(),
            error_middleware(ERROR_SHAPES, default=render_detail, base_path=settings.base_path),
            # Inside the error middleware: their 403 and 415 come in the route's own shape.
            origins.cookie_write_guard(),
            plain_bodies,
        ],
    )
    app[SETTINGS] = settings
    app[ORIGINS] = origins
    # Open WebUI's web app, when `gateway webui install` put it in the data dir.
    webui.mount(app, settings.data_dir, settings.base_path)
    # Opened in this order, closed in the reverse one.
    app.cleanup_ctx.extend(
        [
            _storage,
            _model_servers,
            _core,
            _replies,
            _chats,
            _accounts,
            _realtime,
            _assistants,
            _readiness,
            _socketio,
            _websocket_pings,
        ]
    )
    app.on_response_prepare.append(_server_header)
    health.add_routes(app)
    openai.add_routes(app, "/v1")
    app.router.add_get("/api/models", openai.list_models)
    app.router.add_get("/api/v1/models", openai.list_models)
    completions.add_routes(app)
    tasks.add_routes(app)
    webapp.add_routes(app)
    auths.add_routes(app)
    users.add_routes(app)
    images.add_routes(app)
    chats.add_routes(app)
    streams.add_routes(app)
    socketio.add_routes(app)
    nadoo.add_routes(app)
    trace.add_routes(app)
    ragflow.add_routes(app)
    ragflow_ws.add_routes(app)
    return app


async def _websocket_pings(app: web.Application) -> AsyncIterator[None]:
    app[PINGS] = Pings()
    try:
        yield
    finally:
        app[PINGS].close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STORE] = await open_store(
        settings.database_url, settings.data_dir, settings.database_pool_size
    )
    try:
        yield
    finally:
        await app[STORE].close()


async def _model_servers(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connector = aiohttp.TCPConnector(limit=settings.upstream_max_connections, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        upstreams = build_upstreams(settings, session)
        app[ROUTER] = ModelRouter(upstreams, settings.upstream_models_ttl_s)
        yield


async def _core(app: web.Application) -> AsyncIterator[None]:
    """The fan-out (and the bus and replica registry, when replicas share Redis) and
    the chat core.  The bus starts once the core can take what other replicas send."""
    settings, store = app[SETTINGS], app[STORE]
    redis_url = settings.redis_url if settings.websocket_manager == "redis" else None
    bus, replicas = make_bus(redis_url, settings.redis_key_prefix, settings.bus_max_message_bytes)
    journal = make_journal(
        redis_url, settings.redis_key_prefix, settings.replay_events, settings.replay_ttl_s
    )
    hub = Hub(
        settings.outbox_max_events,
        settings.outbox_max_chars,
        bus,
        journal,
        stall_s=settings.stalled_client_s,
    )
    background = Background(app[ROUTER], store, hub, settings.task_model)
    service = ChatService(
        app[ROUTER],
        store,
        hub,
        settings.checkpoint_interval_s,
        settings.default_model,
        Presence(replicas),
        replicas,
        background,
        # A finished reply's trace is kept as long as its replay buffer.
        Traces(keep_s=settings.replay_ttl_s),
        settings.max_replies_per_user,
    )
    running = service.replies
    await replicas.start(running.on_control, running.on_orphan)
    await bus.start(hub.deliver, running.stored_content)
    await running.recover_unfinished()
    app[HUB], app[CORE], app[REPLICAS] = hub, service, replicas
    try:
        yield
    finally:
        await background.close()
        await service.shutdown()
        await journal.close()
        await bus.close()
        await replicas.close()


async def _replies(app: web.Application) -> AsyncIterator[None]:
    app[REPLIES] = Replies(app[CORE], app[HUB], app[SETTINGS].max_followers_per_user)
    yield


async def _chats(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis_url = settings.redis_url if settings.websocket_manager == "redis" else None
    locks = make_locks(redis_url, settings.redis_key_prefix)
    app[CHATS] = Chats(app[STORE], app[CORE].replies, app[HUB], locks)
    try:
        yield
    finally:
        await locks.close()


async def _accounts(app: web.Application) -> AsyncIterator[None]:
    """Who is asking, and for how long: tokens, users and keys, passwords, access."""
    settings, store, service = app[SETTINGS], app[STORE], app[CORE]
    public_key = (
        settings.jwt_public_key_file.read_text(encoding="utf-8")
        if settings.jwt_public_key_file
        else None
    )
    directory = StoreDirectory(store, settings.api_keys, settings.access_recheck_s)
    authenticator = Authenticator(secret_key(settings), directory, public_key)

    async def stop_replies_of(user_id: str) -> None:
        # A removed user: refused from now on, and their replies on this replica
        # stopped (each replica polls).
        directory.forget(user_id)
        replies = service.replies
        await replies.cancel(*(r for r in replies.running.values() if r.user_id == user_id))

    access = AccessGuard(store, settings.access_recheck_s, stop_replies_of)
    passwords = Passwords(
        settings.password_min_chars,
        settings.password_hash_threads,
        settings.password_hash_max_waiting,
    )
    throttle = SignInThrottle(
        settings.signin_max_failures_per_account,
        settings.signin_max_failures_per_address,
        settings.signin_failure_window_s,
        settings.signin_max_lockout_s,
    )
    await access.start()
    await passwords.start()
    app[AUTHENTICATOR] = authenticator
    app[ACCOUNTS] = Accounts(
        store, passwords, throttle, access, enable_signup=settings.enable_signup
    )
    app[ACCESS] = access
    try:
        yield
    finally:
        passwords.close()
        await access.close()


async def _realtime(app: web.Application) -> AsyncIterator[None]:
    app[REALTIME] = Realtime(
        app[HUB], app[CORE].presence, app[ACCESS], app[AUTHENTICATOR], app[REPLICAS]
    )
    yield


async def _assistants(app: web.Application) -> AsyncIterator[None]:
    app[ASSISTANTS] = Assistants(app[STORE], app[STORE], app[REPLIES])
    yield


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    app[READINESS] = Readiness(app[HUB].bus, app[STORE], app[ROUTER].upstreams)
    yield


async def _socketio(app: web.Application) -> AsyncIterator[None]:
    sockets = SocketIOTransport(
        app[SETTINGS], app[ORIGINS], app[REALTIME], app[CHATS], app[REPLIES]
    )
    app[SOCKETIO] = sockets
    try:
        yield
    finally:
        await sockets.shutdown()
