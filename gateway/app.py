"""Assembles the aiohttp application from settings.

Long-lived resources (the upstream HTTP session, later the store and the
bus) are opened and closed with the app through `cleanup_ctx`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from gateway.api import health, nadoo, openai
from gateway.api.common import Renderer, error_middleware, render_detail, render_openai
from gateway.api.openwebui import auths, chats, completions, tasks, users, webapp
from gateway.api.ragflow import http as ragflow
from gateway.api.ragflow import ws as ragflow_ws
from gateway.application.access import AccessGuard
from gateway.application.accounts import StoreDirectory
from gateway.bus import Bus
from gateway.bus.memory import LocalBus
from gateway.bus.redis import RedisBus
from gateway.chat.assistants import Assistants
from gateway.chat.service import ChatService
from gateway.context import GATEWAY, Gateway
from gateway.edge.auth import Authenticator
from gateway.edge.connections import SERVER_HEADER, body_deadline
from gateway.edge.origins import OriginPolicy
from gateway.edge.passwords import Passwords
from gateway.edge.proxy import ProxyPolicy, prefix
from gateway.edge.secrets import load_or_create_secret
from gateway.edge.throttle import SignInThrottle
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence
from gateway.settings import Settings
from gateway.store import open_store
from gateway.transports.socketio import SocketIOTransport
from gateway.upstream import Upstream
from gateway.upstream.demo import DemoUpstream
from gateway.upstream.openai import OpenAIUpstream
from gateway.upstream.router import ModelRouter

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
    forwarded = ProxyPolicy(settings.trusted_proxies).middleware()
    if not settings.base_path:
        return _gateway_app(settings, [forwarded])
    root = web.Application(
        client_max_size=settings.max_request_body_bytes,
        middlewares=[
            forwarded,
            # A route asked for outside the base path: a 404 that says where it is.
            error_middleware(ERROR_SHAPES, default=render_detail, base_path=settings.base_path),
        ],
    )

    async def to_base_path(request: web.Request) -> web.StreamResponse:
        location = URL(prefix(request, settings.base_path) + "/").with_query(request.query)
        raise web.HTTPMovedPermanently(location)

    # Before the sub-application, which would claim "/chat" too.
    root.router.add_get(settings.base_path, to_base_path)
    root.add_subapp(settings.base_path, _gateway_app(settings, []))
    root.on_response_prepare.append(_server_header)
    return root


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default names its version and Python's: no one needs to know them.
    response.headers["Server"] = SERVER_HEADER


def _gateway_app(settings: Settings, outer: list[Middleware]) -> web.Application:
    origins = OriginPolicy(settings.cors_allow_origin)
    app = web.Application(
        client_max_size=settings.max_request_body_bytes,
        middlewares=[
            *outer,
            body_deadline(settings.request_body_timeout_s),
            origins.middleware(),
            error_middleware(ERROR_SHAPES, default=render_detail, base_path=settings.base_path),
            # Inside the error middleware: its 403 comes in the route's own shape.
            origins.cookie_write_guard(),
        ],
    )
    public_key = (
        settings.jwt_public_key_file.read_text(encoding="utf-8")
        if settings.jwt_public_key_file
        else None
    )
    signing_key = secret_key(settings)
    sockets = SocketIOTransport(settings, origins)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        store = await open_store(settings.database_url, settings.data_dir)
        connector = aiohttp.TCPConnector(limit=settings.upstream_max_connections, limit_per_host=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                router = ModelRouter(
                    build_upstreams(settings, session), settings.upstream_models_ttl_s
                )
                bus: Bus = (
                    RedisBus(
                        settings.redis_url,
                        settings.redis_key_prefix,
                        settings.bus_max_message_bytes,
                    )
                    if settings.websocket_manager == "redis"
                    else LocalBus()
                )
                hub = Hub(settings.outbox_max_events, settings.outbox_max_chars, bus)
                presence = Presence(bus)
                service = ChatService(
                    router,
                    store,
                    hub,
                    settings.checkpoint_interval_s,
                    settings.default_model,
                    presence,
                )
                replies = service.replies
                await bus.start(
                    hub.deliver, replies.on_control, replies.on_orphan, replies.stored_content
                )
                await replies.recover_unfinished()
                authenticator = Authenticator(
                    signing_key, StoreDirectory(store, settings.api_keys), public_key
                )

                async def stop_replies_of(user_id: str) -> None:
                    # A removed user's replies on this replica (each replica polls).
                    for running in list(replies.running.values()):
                        if running.user_id == user_id:
                            await replies.cancel(running)

                access = AccessGuard(store, settings.access_recheck_s, stop_replies_of)
                await access.start()
                sockets.bind(authenticator, hub, store, presence, access)
                passwords = Passwords(
                    settings.password_min_chars,
                    settings.password_hash_threads,
                    settings.password_hash_max_waiting,
                )
                await passwords.start()
                app[GATEWAY] = Gateway(
                    settings=settings,
                    origins=origins,
                    authenticator=authenticator,
                    router=router,
                    service=service,
                    store=store,
                    hub=hub,
                    sockets=sockets,
                    presence=presence,
                    assistants=Assistants(store, service),
                    access=access,
                    passwords=passwords,
                    signin_throttle=SignInThrottle(
                        settings.signin_max_failures_per_account,
                        settings.signin_max_failures_per_address,
                        settings.signin_failure_window_s,
                        settings.signin_max_lockout_s,
                    ),
                )
                try:
                    yield
                finally:
                    passwords.close()
                    await access.close()
                    await sockets.shutdown()
                    await replies.shutdown()
                    await bus.close()
        finally:
            await store.close()

    app.cleanup_ctx.append(resources)
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
    chats.add_routes(app)
    sockets.add_routes(app)
    nadoo.add_routes(app)
    ragflow.add_routes(app)
    ragflow_ws.add_routes(app)
    return app
