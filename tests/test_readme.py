"""The README's quick start and its client snippets run as written: the first
quick-start command serves, the second is what CI runs, and each snippet,
pasted into a shell or Python, gets its answer from that gateway.

Only the port is changed (a free one instead of 8080, so the test never meets
another gateway) and `DATA_DIR` points the server and `gateway token` at one
temporary directory, as they would share `./data` in a checkout."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """From the heading `## title` to the next heading of any level."""
    start = README.index(f"\n## {title}\n")
    end = re.compile(r"\n#{2,3} ").search(README, start + 1)
    return README[start : end.start() if end else len(README)]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def snippet(containing: str) -> str:
    found = [b for b in blocks(README, "python") if containing in b]
    assert len(found) == 1, f"one README snippet with {containing!r}"
    return found[0]


QUICK_START = blocks(section("Quick start"), "sh")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    # The scripts exec the gateway, so its PID is the one we started.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "WEBUI_"))
    }
    env.pop("DATA_DIR", None)
    return {**env, **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The first quick-start command, as written, on a free port."""
    command = QUICK_START[0].splitlines()[0].split("#")[0].strip()
    assert command == "bash scripts/serve.sh"
    port, data = free_port(), tmp_path_factory.mktemp("readme-data")
    # No shell between us and the script: it execs the gateway, so stopping the
    # process we started stops the gateway (a shell in between would leave it).
    proc = subprocess.Popen(
        shlex.split(command),
        cwd=ROOT,
        env=clean_env(GATEWAY_PORT=str(port), DATA_DIR=str(data)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port, data
    finally:
        stop(proc)


def test_the_second_quick_start_command_is_what_ci_runs() -> None:
    second = QUICK_START[0].splitlines()[1].split("#")[0].strip()
    assert second == "bash scripts/test.sh"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def run_shell(text: str, port: int, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")],
        cwd=ROOT,
        env=clean_env(DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def token(data: Path) -> str:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "gateway"), "token", "--user", "alice", "--ttl", "600"],
        env=clean_env(DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_curl_snippet_streams_a_reply(served: tuple[int, Path]) -> None:
    port, data = served
    (shell,) = blocks(section("Use it"), "sh")
    result = run_shell(shell, port, data)
    assert result.returncode == 0, result.stderr
    assert '"object":"chat.completion.chunk"' in result.stdout and "data: [DONE]" in result.stdout


@pytest.mark.parametrize(
    ("marker", "expect"),
    [
        ("from openai import OpenAI", "hi"),
        ('socketio_path="/ws/socket.io"', "chat:completion"),
        ("from ragflow_sdk import RAGFlow", "RAGFlow"),
        ("/ws/chat/session-abc", "'type': 'connected'"),
    ],
)
def test_a_python_snippet_runs_as_pasted(
    served: tuple[int, Path], marker: str, expect: str
) -> None:
    port, data = served
    code = snippet(marker).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(TOKEN=token(data)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert expect in result.stdout, result.stdout
    # The demo model quotes the question back: the reply arrived whole.
    assert "gateway-demo" in result.stdout or "hi" in result.stdout or "Q4" in result.stdout


def test_pip_install_into_a_virtualenv_of_ones_own(tmp_path: Path) -> None:
    """The quick start's `pip install .` line, in a copy of the checkout (it makes .venv)."""
    (line,) = [b for b in QUICK_START if "pip install ." in b]
    copy = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".tools",
            "node_modules",
            "data",
            "*cache*",
            "__pycache__",
            "*.egg-info",
        ),
    )
    port = free_port()
    proc = subprocess.Popen(
        line.strip(),
        shell=True,
        cwd=copy,
        env=clean_env(GATEWAY_PORT=str(port), PIP_DISABLE_PIP_VERSION_CHECK="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=300)
    finally:
        # The shell line ends in the gateway: stop the whole group we started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
