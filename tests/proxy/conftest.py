"""Two gateway replicas (one Redis, one PostgreSQL) behind each shipped proxy config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess
from tests.proxy.runners import Proxy, start_caddy, start_nginx
from tests.services import pg_database

CONFIGS = ["nginx-root", "nginx-subpath", "caddy-root", "caddy-subpath", "nginx-compose"]


def replica_env(upstream: FakeUpstream, database_url: str, prefix: str) -> dict[str, str]:
    return {
        "OPENAI_API_BASE_URL": upstream.url,
        "WEBSOCKET_MANAGER": "redis",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
        "DATABASE_URL": database_url,
        # An allowlist, as in production: pages of the gateway's own host and this one.
        "CORS_ALLOW_ORIGIN": "https://app.example.com",
    }


@pytest.fixture(scope="module")
def replicas(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    """Replicas A and B, sharing a fresh database and a Redis key prefix of their own."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    with pg_database() as database_url:
        env = replica_env(fake_upstream, database_url, prefix)
        started = [
            GatewayProcess(tmp_path_factory.mktemp(f"replica-{name}"), env) for name in ("a", "b")
        ]
        try:
            for replica in started:
                replica.start()
            yield started
        finally:
            for replica in started:
                replica.stop()


@pytest.fixture(scope="module")
def proxies(
    replicas: list[GatewayProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Proxy]]:
    ports = [replica.port for replica in replicas]
    started: dict[str, Proxy] = {}
    try:
        started["nginx-root"] = start_nginx(
            tmp_path_factory.mktemp("nginx-root"), "nginx/gateway.conf", ports
        )
        started["nginx-subpath"] = start_nginx(
            tmp_path_factory.mktemp("nginx-subpath"),
            "nginx/gateway-subpath.conf",
            ports,
            prefix="/chat",
        )
        started["caddy-root"] = start_caddy(
            tmp_path_factory.mktemp("caddy-root"), "Caddyfile", ports
        )
        started["caddy-subpath"] = start_caddy(
            tmp_path_factory.mktemp("caddy-subpath"), "Caddyfile.subpath", ports, prefix="/chat"
        )
        started["nginx-compose"] = start_nginx(
            tmp_path_factory.mktemp("nginx-compose"), "deploy/compose/nginx.conf", ports
        )
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


@pytest.fixture(params=CONFIGS)
def proxy(request: pytest.FixtureRequest, proxies: dict[str, Proxy]) -> Proxy:
    """Each shipped config in turn."""
    return proxies[request.param]
