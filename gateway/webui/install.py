"""`gateway webui install`: Open WebUI's built frontend from its wheel, into the data dir.

The wheel is fetched with the running interpreter's pip (`pip download --no-deps
--only-binary=:all:`: one file, nothing installed, no build), so pip's own
settings (index, mirror, proxy, certificates) apply.  Only the wheel's built
frontend (`open_webui/frontend/`) and its licence files are unpacked; the version
is unpacked beside the others, then the record is switched to it, so a server
started meanwhile serves a whole version, old or new.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from gateway.webui.layout import PACKAGE, Installed, webui_dir, write_record

# Where the built frontend sits in the wheel: `<package>/frontend/index.html`
# (open_webui/frontend/ in every release since 0.1; found, not assumed).
_FRONTEND = re.compile(r"^(?:[^/]+/)*frontend/index\.html$")
_LICENCE = re.compile(r"^[^/]+\.dist-info/(?:licenses/)?(?:LICEN[CS]E|NOTICE|COPYING)[^/]*$", re.I)


class InstallError(Exception):
    """One line saying what failed (the command exits 1 with it)."""


def install(
    data_dir: Path,
    version: str,
    *,
    wheel_dir: Path | None = None,
    progress: bool = False,
) -> Installed:
    """Fetch `open-webui==version`, unpack its frontend, record it; the installed app."""
    if importlib.util.find_spec("pip") is None:
        raise InstallError(
            f"this Python ({sys.executable}) has no pip to fetch {PACKAGE} with; "
            f"install pip into it ({sys.executable} -m ensurepip), then run again"
        )
    if wheel_dir is not None and wheel_dir.exists() and not wheel_dir.is_dir():
        raise InstallError(f"--wheel-dir {wheel_dir} is a file, not a directory")
    home = webui_dir(data_dir)
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=".download-") as scratch:
        wheel = _download(version, wheel_dir or Path(scratch), progress)
        return _unpack(wheel, data_dir, version)


def _download(version: str, dest: Path, progress: bool) -> Path:
    requirement = f"{PACKAGE}=={version}"
    command = [
        sys.executable, "-m", "pip", "download", requirement,
        "--no-deps", "--only-binary=:all:", "--no-input", "--disable-pip-version-check",
        "--dest", str(dest),
    ]  # fmt: skip
    # On a terminal pip draws its progress bar (on stdout); elsewhere it says nothing.
    command += ["--progress-bar", "on"] if progress else ["--quiet", "--progress-bar", "off"]
    try:
        done = subprocess.run(
            command, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise InstallError(f"cannot run pip to fetch {requirement}: {exc}") from None
    if done.returncode != 0:
        raise InstallError(f"pip cannot fetch {requirement}: {_pip_error(done.stderr)}")
    wheels = sorted(dest.glob(f"{PACKAGE.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise InstallError(f"pip fetched no wheel of {requirement} into {dest}")
    return wheels[0]


def _pip_error(stderr: bytes) -> str:
    """pip's first ERROR line, without the list of every version it knows; when that
    line only heads what follows (pip's own failure: "Exception:", then its
    traceback), with the last line, which says what failed."""
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    message = errors[0].strip() if errors else ""
    last = lines[-1].strip() if lines else ""
    if (not message or message.endswith(":")) and not last.startswith("ERROR:"):
        message = f"{message} {last}"
    message = re.sub(r" \(from versions: [^)]*\)", "", message).strip()
    return message or "it failed without saying why"


def _unpack(wheel: Path, data_dir: Path, version: str) -> Installed:
    home = webui_dir(data_dir)
    target = home / version
    partial = Path(tempfile.mkdtemp(dir=home, prefix=f".{version}-"))
    try:
        _unpack_into(wheel, partial)
        partial.chmod(0o755)
        # The version's directory replaced whole: the old one moved aside, then removed.
        old = home / f".{version}-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    write_record(
        data_dir,
        {
            "version": version,
            "frontend": f"{version}/frontend",
            "wheel": wheel.name,
            "sha256": _sha256(wheel),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return Installed(version, target / "frontend", wheel.name)


def _unpack_into(wheel: Path, partial: Path) -> None:
    """The wheel's frontend into partial/frontend/, its licence files into partial/."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise InstallError(f"{wheel.name} is not a wheel: {exc}") from None
    with archive:
        names = archive.namelist()
        index = min((n for n in names if _FRONTEND.match(n)), key=len, default=None)
        if index is None:
            raise InstallError(f"{wheel.name} has no built frontend (no …/frontend/index.html)")
        root = index.removesuffix("index.html")
        for name in names:
            if name.startswith(root) and not name.endswith("/"):
                _extract(archive, name, partial / "frontend" / _safe(name[len(root) :]))
            elif _LICENCE.match(name):
                _extract(archive, name, partial / PurePosixPath(name).name)


def _safe(relative: str) -> Path:
    """A member's path inside the target, refusing any that would climb out of it."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InstallError(f"the wheel holds a path outside its frontend: {relative!r}")
    return Path(*path.parts)


def _extract(archive: zipfile.ZipFile, name: str, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(name) as source, to.open("wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(app: Installed, say: Callable[[str], None]) -> None:
    """Where the app is, for the person who installed it."""
    licences = sorted(p.name for p in app.home.iterdir() if p.is_file())
    say(f"Open WebUI {app.version}'s web app installed in {app.frontend.resolve()}")
    if licences:
        say(f"its licence ({', '.join(licences)}) is beside it, in {app.home.resolve()}")
    say("gateway serve serves it at / (restart a running gateway to pick it up)")
