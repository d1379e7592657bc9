"""The image installs what uv.lock says, no more and no other version: the
Dockerfile's install runs here on loopback (no Docker engine), from the files
it copies, with the uv that made the lock, and what it installed is compared
with the lock's runtime dependencies as uv itself exports them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".tools" / "bin" / "uv"  # scripts/lib.sh's bootstrap_uv, run by the test command
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    assert len(found) == 1, (pattern, found)
    return str(found[0])


def _copied() -> list[str]:
    """What the Dockerfile's COPY lines take from the build context."""
    sources: list[str] = []
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.MULTILINE):
        sources += line.split()[:-1]
    return sources


def _env() -> dict[str, str]:
    """The Dockerfile's ENV before its install (one ENV with continuation lines)."""
    block = _one(r"^ENV (UV_(?:[^\n\\]|\\\n)*)", DOCKERFILE)
    pairs = shlex.split(block.replace("\\\n", " "))
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_image_pins_the_uv_that_made_the_lock() -> None:
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert _one(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE) == _one(r"^UV_VERSION=(\S+)$", lib)
    assert 'RUN pip install --no-cache-dir --only-binary=:all: "uv==${UV_VERSION}"' in DOCKERFILE


def test_the_build_context_keeps_what_the_image_copies() -> None:
    assert _copied() == ["pyproject.toml", "uv.lock", "README.md", "gateway"]
    ignored = [
        line.rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert not set(_copied()) & set(ignored)
    assert {".venv", ".tools", ".git", "data"} <= set(ignored)  # large or local


def _installed(venv: Path) -> dict[str, str]:
    listed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {canonicalize_name(k): v for k, v in json.loads(listed.stdout).items()}


def _locked_runtime(project: Path, env: dict[str, str]) -> dict[str, str]:
    """uv.lock's runtime dependencies (no extras) for this machine, as uv exports them."""
    exported = subprocess.run(
        [
            str(UV),
            "export",
            "--locked",
            "--offline",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    wanted: dict[str, str] = {}
    for line in exported.stdout.splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, _, version = requirement.strip().partition("==")
        wanted[canonicalize_name(name)] = version
    return wanted


@pytest.mark.timeout(600)
def test_the_images_install_is_the_lock(tmp_path: Path) -> None:
    """The Dockerfile's `uv sync` line as it stands, but `--offline` for `--no-cache`
    (the test command's own install filled the cache) and this machine's Python
    for the image's."""
    assert UV.is_file(), "the test command (scripts/test.sh) bootstraps uv into .tools/"
    project = tmp_path / "app"
    project.mkdir()
    for source in _copied():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, project / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, project / source)
    sync = shlex.split(_one(r"^RUN (uv sync [^\n]+)$", DOCKERFILE))
    assert sync[:2] == ["uv", "sync"] and {"--locked", "--no-dev", "--no-cache"} <= set(sync)
    python = sync.index("--python")
    sync[python + 1] = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    command = [str(UV), *sync[1:]]
    command[command.index("--no-cache")] = "--offline"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("UV_PROJECT") and k not in ("VIRTUAL_ENV",)
    }
    env.update(_env())
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr

    venv = project / ".venv"
    installed = _installed(venv)
    assert installed.pop("chat-gateway") == _one(
        r'^version = "(\S+)"$', (ROOT / "pyproject.toml").read_text()
    )
    assert installed == _locked_runtime(project, env)
    assert "pytest" not in installed and "playwright" not in installed  # no extras
    # Not editable: the image runs the installed package, not the copied sources.
    shutil.rmtree(project / "gateway")
    version = subprocess.run(
        [str(venv / "bin" / "gateway"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and version.stdout.startswith("gateway "), version
