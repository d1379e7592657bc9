"""uv.lock stays the lock of pyproject.toml, and uv's check would notice if not.

The uv that runs is the pinned one: $UV (scripts/test.sh exports it), else
.tools/bin/uv (scripts/lib.sh puts it there), else uv on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _uv() -> str:
    given = os.environ.get("UV")
    if given:
        assert Path(given).is_file(), f"$UV is {given}, which is no file"
        return given
    pinned = ROOT / ".tools" / "bin" / "uv"
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("uv")
    assert found is not None, (
        "uv is needed: set UV, or run scripts/test.sh (it puts the pinned uv in .tools/)"
    )
    return found


def _uv_lock_check(uv: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Never a Python download, as in scripts/lib.sh.
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.setdefault("UV_PYTHON", sys.executable)
    return subprocess.run(
        [uv, "lock", "--check", "--no-progress", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_lock_matches_pyproject() -> None:
    # --offline: a lock that satisfies pyproject.toml is checked without the index.
    result = _uv_lock_check(_uv(), ROOT, "--offline")
    assert result.returncode == 0, result.stderr


def _narrowed(pyproject: str, lock: dict[str, Any]) -> tuple[str, str]:
    """pyproject.toml's text with one runtime dependency's range narrowed to exclude the
    locked version (pyyaml if it is there), and that requirement."""
    locked = {p["name"]: p["version"] for p in lock["package"]}
    requirements = tomllib.loads(pyproject)["project"]["dependencies"]
    ranged = [
        r
        for r in requirements
        if ";" not in r and re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?[<>=!~]", r)
    ]
    ranged.sort(key=lambda r: not r.lower().startswith("pyyaml"))
    assert ranged, "no runtime dependency with a version range in pyproject.toml"
    requirement = ranged[0]
    name = re.split(r"[\[<>=!~]", requirement, maxsplit=1)[0]
    version = locked[re.sub(r"[-_.]+", "-", name).lower()]
    narrowed = f"{requirement},!={version}"
    assert pyproject.count(f'"{requirement}"') == 1
    return pyproject.replace(f'"{requirement}"', f'"{narrowed}"'), narrowed


def test_lock_check_fails_when_pyproject_moves_away(tmp_path: Path) -> None:
    lock_text = (ROOT / "uv.lock").read_text()
    pyproject, narrowed = _narrowed((ROOT / "pyproject.toml").read_text(), tomllib.loads(lock_text))
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "uv.lock").write_text(lock_text)

    # Online: deciding that the lock must change means resolving again, from the index.
    result = _uv_lock_check(_uv(), tmp_path)

    assert result.returncode != 0, f"uv lock --check passed with {narrowed}"
    assert "needs to be updated" in result.stderr, result.stderr
    assert "network" not in result.stderr.lower(), result.stderr
    # The copy is only checked, never rewritten.
    assert (tmp_path / "uv.lock").read_text() == lock_text
