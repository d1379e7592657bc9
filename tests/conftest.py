from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import logscan
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import LOG_FILES, GatewayProcess, make_token


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The log scan (`tests/logscan.py`) over every gateway log of the run: a token,
    a password or a reply's text in one fails the run."""
    findings = logscan.scan(dict.fromkeys(LOG_FILES))
    if not findings:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"log scan: {len(findings)} secret(s) or message text in gateway logs:"]
    lines += [f"  {finding}" for finding in findings[:50]]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway process for the session: fake upstream first, then the demo model."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("gw"),
        {
            "OPENAI_API_BASE_URL": fake_upstream.url,
            "GATEWAY_API_KEYS": "sk-" + "a" * 32 + "=keyuser",
        },
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[object]:
    """Start extra gateway processes with their own settings; all stopped at the end."""
    started: list[GatewayProcess] = []

    def start(env: dict[str, str] | None = None, data_dir: Path | None = None) -> GatewayProcess:
        proc = GatewayProcess(data_dir or tmp_path / f"gw{len(started)}", env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def alice_token() -> str:
    return make_token("alice", name="Alice")
