"""Open WebUI's own web app, installed with `gateway webui install` and driven in
Debian's Chromium (package chromium, installed by scripts/test.sh) through the Python
`playwright` client — never a browser of playwright's own (no `playwright install`).

The wheel is downloaded once per test run into a pytest temporary directory
(`--wheel-dir`), and each data dir gets the web app from it with the same command
a person runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EMAIL, PASSWORD, NAME = "alice@example.com", "correct horse battery staple", "Alice Browser"


def gateway_command(
    data_dir: Path, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` with the settings a GatewayProcess of that data dir has."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_", "WEBUI_"))
    }
    env.update({"DATA_DIR": str(data_dir), "WEBUI_SECRET_KEY": SECRET, **(extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def webui_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the open-webui wheel is kept for the run (downloaded by the first install)."""
    return tmp_path_factory.mktemp("webui-wheel")


def install_webui(data_dir: Path, wheels: Path, extra: dict[str, str] | None = None) -> str:
    done = gateway_command(data_dir, "webui", "install", "--wheel-dir", str(wheels), extra=extra)
    assert done.returncode == 0, f"gateway webui install failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def add_user(data_dir: Path, extra: dict[str, str] | None = None) -> None:
    done = gateway_command(
        data_dir, "users", "add", "--email", EMAIL, "--password", PASSWORD, "--name", NAME,
        "--role", "user", extra=extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def browser_upstream() -> Iterator[FakeUpstream]:
    """A model server of the module's own, slow enough (30 ms a delta) that a reply
    is seen streaming."""
    fake = FakeUpstream()
    fake.delay_s = 0.03
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[object]:
    """A fresh Chromium profile (persistent context: its own user-data dir)."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (scripts/test.sh installs it)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
            locale="en-US",
            timezone_id="UTC",
        )
        try:
            yield context
        finally:
            context.close()
