"""`gateway doctor` from outside: all OK through every shipped config, and each
fault of a deliberately broken nginx named with its fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway import doctor
from tests.gatewayproc import GatewayProcess
from tests.proxy.runners import REPO, Proxy, start_nginx
from tests.proxy.test_through_proxies import user

# The three classic mistakes at once: no upgrade lines (and so HTTP/1.0 to the
# gateway), buffering forced on even against X-Accel-Buffering, round robin.
BROKEN = """
upstream gateway {
    server 127.0.0.1:8081;
    server 127.0.0.1:8082;
}
server {
    listen 80;
    location / {
        proxy_pass http://gateway;
        proxy_buffering on;
        proxy_ignore_headers X-Accel-Buffering;
    }
}
"""


@pytest.fixture(scope="module")
def broken(
    replicas: list[GatewayProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    ports = [replica.port for replica in replicas]
    proxy = start_nginx(tmp_path_factory.mktemp("broken"), "broken.conf", ports, text=BROKEN)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def impatient(
    replicas: list[GatewayProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The shipped config with a 3 s read timeout where it says 3600 s."""
    shipped = (REPO / "nginx" / "gateway.conf").read_text()
    assert "proxy_read_timeout 3600s;" in shipped
    text = shipped.replace("proxy_read_timeout 3600s;", "proxy_read_timeout 3s;")
    ports = [replica.port for replica in replicas]
    proxy = start_nginx(tmp_path_factory.mktemp("impatient"), "impatient.conf", ports, text=text)
    yield proxy
    proxy.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


async def test_every_shipped_config_is_all_ok(proxy: Proxy) -> None:
    report = await doctor.run(proxy.base, token=user(), origin=proxy.origin, polls=10)
    statuses = {check.name: check.status for check in report.checks}
    assert report.faults == 0, report.render()
    assert statuses.pop("idle-stream") == "SKIP"  # needs --slow (below)
    assert set(statuses.values()) == {"OK"}, report.render()
    assert {"chat:openai", "chat:openwebui", "chat:nadoo", "chat:ragflow"} <= set(statuses)


async def test_a_broken_nginx_gets_each_fault_and_its_fix(broken: Proxy) -> None:
    done = await asyncio.to_thread(run_cli, broken.base, "--token", user())
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    fails = {line.split()[1]: line for line in out.splitlines() if line.startswith("FAIL")}
    assert set(fails) == {"websocket-upgrade", "socketio-polling", "sse-chunking"}, out
    assert "HTTP/1.0" in fails["websocket-upgrade"]
    assert "not sticky" in fails["socketio-polling"]
    assert "buffered" in fails["sse-chunking"]
    for fix in (
        "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;",
        "map $http_upgrade $connection_upgrade",
        "hash $gw_affinity consistent;",
        "ip_hash;",
        "lb_policy cookie",
        "proxy_buffering off;",
        "flush_interval -1",
    ):
        assert fix in out, fix
    assert out.rstrip().splitlines()[-1].startswith("3 faults")


async def test_an_idle_stream_cut_by_a_short_read_timeout_is_caught(impatient: Proxy) -> None:
    report = await doctor.run(impatient.base, token=user(), slow=True, idle_seconds=6)
    idle = report.get("idle-stream")
    assert idle.status == "FAIL", report.render()
    assert any("proxy_read_timeout 3600s;" in line for line in idle.fix), idle.fix
    assert report.faults == 1, report.render()


async def test_the_shipped_nginx_holds_an_idle_stream_past_a_minute(
    proxies: dict[str, Proxy],
) -> None:
    """`--slow` as an operator runs it: 65 s of silence, past nginx's default 60 s."""
    proxy = proxies["nginx-root"]
    done = await asyncio.to_thread(run_cli, proxy.base, "--token", user(), "--slow")
    assert done.returncode == 0, done.stdout + done.stderr
    idle = next(line for line in done.stdout.splitlines() if " idle-stream " in line)
    assert idle.startswith("OK") and "65 s idle" in idle, idle


async def test_https_through_the_tls_listener_with_insecure(proxies: dict[str, Proxy]) -> None:
    proxy = proxies["nginx-subpath"]
    url = f"https://127.0.0.1:{proxy.tls_port}/chat"
    refused = await doctor.run(url, token=user())
    assert refused.get("health").status == "FAIL"  # a self-signed certificate
    assert "--insecure" in " ".join(refused.get("health").fix), refused.render()
    report = await doctor.run(url, token=user(), insecure=True, polls=4)
    assert report.faults == 0, report.render()
