"""`gateway webui install` and `status`, with pip kept offline: a small wheel of the
same layout as open-webui's (made here) is what pip finds, through PIP_FIND_LINKS and
PIP_NO_INDEX.  The real wheel is installed by the browser test (tests/browser/)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from gateway.api.openwebui.webapp import OPENWEBUI_VERSION
from gateway.webui.install import _pip_error
from gateway.webui.layout import DEFAULT_VERSION, installed
from tests.browser.conftest import gateway_command

VERSION = "0.0.1"
FRONTEND = {
    "open_webui/frontend/index.html": "<!doctype html><title>app</title>",
    "open_webui/frontend/_app/immutable/entry/start.abc123.js": "export {}",
    "open_webui/frontend/_app/version.json": '{"version":"abc"}',
    "open_webui/frontend/static/favicon.png": "png",
}
ELSE = {
    "open_webui/main.py": "print('the backend: never unpacked')",
    "open_webui/static/loader.js": "// the backend's copy: never unpacked",
    f"open_webui-{VERSION}.dist-info/licenses/LICENSE": "the licence",
    f"open_webui-{VERSION}.dist-info/licenses/LICENSE_NOTICE": "a notice",
}
# What pip checks before it keeps a wheel.
METADATA = {
    f"open_webui-{VERSION}.dist-info/METADATA": (
        f"Metadata-Version: 2.1\nName: open-webui\nVersion: {VERSION}\n"
    ),
    f"open_webui-{VERSION}.dist-info/WHEEL": (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ),
    f"open_webui-{VERSION}.dist-info/RECORD": "",
}


def make_wheel(directory: Path, members: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"open_webui-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in {**members, **METADATA}.items():
            archive.writestr(name, text)
    return wheel


def offline(links: Path) -> dict[str, str]:
    """pip finds wheels in `links` only: no index, no network."""
    return {"PIP_FIND_LINKS": str(links), "PIP_NO_INDEX": "1"}


def test_the_default_version_is_the_one_whose_api_the_gateway_speaks() -> None:
    assert DEFAULT_VERSION == OPENWEBUI_VERSION


def test_install_unpacks_only_the_frontend_and_keeps_the_licence(tmp_path: Path) -> None:
    links = tmp_path / "links"
    make_wheel(links, {**FRONTEND, **ELSE})
    data = tmp_path / "data"
    done = gateway_command(data, "webui", "install", "--version", VERSION, extra=offline(links))
    assert done.returncode == 0, done.stderr
    home = data / "webui" / VERSION
    assert f"installed in {(home / 'frontend').resolve()}" in done.stdout
    assert "LICENSE" in done.stdout and "restart" in done.stdout
    unpacked = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())
    assert unpacked == sorted(
        ["LICENSE", "LICENSE_NOTICE"] + [name.removeprefix("open_webui/") for name in FRONTEND]
    )
    record = json.loads((data / "webui" / "installed.json").read_text())
    assert record["version"] == VERSION and record["frontend"] == f"{VERSION}/frontend"
    assert record["wheel"] == f"open_webui-{VERSION}-py3-none-any.whl"
    assert installed(data).frontend == home / "frontend"
    # No wheel and no scratch left behind in the data dir.
    assert sorted(p.name for p in (data / "webui").iterdir()) == [VERSION, "installed.json"]

    status = gateway_command(data, "webui", "status")
    assert status.returncode == 0
    assert status.stdout == f"{VERSION}\t{(home / 'frontend').resolve()}\n"


def test_a_wheel_dir_keeps_the_wheel_and_a_reinstall_replaces_the_version(
    tmp_path: Path,
) -> None:
    links, kept, data = tmp_path / "links", tmp_path / "kept", tmp_path / "data"
    make_wheel(links, {**FRONTEND, **ELSE})
    for _ in range(2):
        done = gateway_command(
            data, "webui", "install", "--version", VERSION, "--wheel-dir", str(kept),
            extra=offline(links),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert [p.name for p in kept.iterdir()] == [f"open_webui-{VERSION}-py3-none-any.whl"]
    assert (data / "webui" / VERSION / "frontend" / "index.html").is_file()
    assert sorted(p.name for p in (data / "webui").iterdir()) == [VERSION, "installed.json"]


def test_status_without_an_install(tmp_path: Path) -> None:
    done = gateway_command(tmp_path / "data", "webui", "status")
    assert done.returncode == 1
    assert done.stderr == "gateway: web app not installed (gateway webui install)\n"


def test_a_version_pip_cannot_fetch_is_one_line_and_exit_1(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    data = tmp_path / "data"
    done = gateway_command(data, "webui", "install", "--version", "9.9.9", extra=offline(links))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("gateway: pip cannot fetch open-webui==9.9.9: ")
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (data / "webui" / "installed.json").exists()


@pytest.mark.parametrize(
    ("members", "says"),
    [
        (ELSE, "has no built frontend"),
        ({**FRONTEND, "open_webui/frontend/../../../evil.txt": "x"}, "outside its frontend"),
    ],
    ids=["no-frontend", "climbing-path"],
)
def test_a_wheel_that_cannot_be_used_changes_nothing(
    tmp_path: Path, members: dict[str, str], says: str
) -> None:
    links, data = tmp_path / "links", tmp_path / "data"
    make_wheel(links, members)
    done = gateway_command(data, "webui", "install", "--version", VERSION, extra=offline(links))
    assert done.returncode == 1
    assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (data / "webui" / "installed.json").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (data / "webui").iterdir()] == []


def test_a_data_dir_whose_parent_is_missing_is_not_made(tmp_path: Path) -> None:
    data = tmp_path / "missing" / "data"
    done = gateway_command(data, "webui", "install", extra=offline(tmp_path))
    assert done.returncode == 1
    assert done.stderr == (
        f"gateway: the data dir {data} cannot be made: {data.parent} does not exist\n"
    )
    assert not data.parent.exists()


def test_a_wheel_dir_that_is_a_file_is_one_line_and_nothing_is_made(tmp_path: Path) -> None:
    kept, data = tmp_path / "kept", tmp_path / "data"
    kept.write_text("a file")
    done = gateway_command(
        data, "webui", "install", "--version", VERSION, "--wheel-dir", str(kept),
        extra=offline(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == f"gateway: --wheel-dir {kept} is a file, not a directory\n"
    assert not (data / "webui").exists()


@pytest.mark.parametrize(
    ("stderr", "said"),
    [
        # pip's own failure: a heading, its traceback, then what failed.
        (
            b'ERROR: Exception:\nTraceback (most recent call last):\n  File "x", line 1\n'
            b"NotADirectoryError: [Errno 20] Not a directory: '/x'\n",
            "Exception: NotADirectoryError: [Errno 20] Not a directory: '/x'",
        ),
        (
            b"ERROR: Could not find a version that satisfies the requirement open-webui==9 "
            b"(from versions: 0.1, 0.2)\nERROR: No matching distribution found for open-webui==9\n",
            "Could not find a version that satisfies the requirement open-webui==9",
        ),
        (b"WARNING: something\nno ERROR line at all\n", "no ERROR line at all"),
        (b"", "it failed without saying why"),
    ],
)
def test_what_pip_said_is_one_line_that_says_why(stderr: bytes, said: str) -> None:
    assert _pip_error(stderr) == said
