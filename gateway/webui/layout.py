"""Where the web app lives in the data dir, and which version is installed.

DATA_DIR/webui/installed.json       {"version", "frontend", "wheel", "sha256", "installed_at"}
DATA_DIR/webui/<version>/frontend/  the wheel's built frontend, as it is
DATA_DIR/webui/<version>/LICENSE…   the wheel's licence files
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# The Open WebUI release whose frontend `gateway webui install` fetches by default:
# the one whose API the gateway speaks (gateway/api/openwebui/webapp.py's
# OPENWEBUI_VERSION; a test keeps the two equal).
DEFAULT_VERSION = "0.12.4"
PACKAGE = "open-webui"
RECORD = "installed.json"


def webui_dir(data_dir: Path) -> Path:
    return data_dir / "webui"


class NotInstalled(Exception):
    """No web app in the data dir, or a record that points at nothing usable (the
    message says which, and how to mend it)."""


@dataclass(frozen=True)
class Installed:
    version: str
    frontend: Path
    wheel: str = ""

    @property
    def home(self) -> Path:
        """The version's directory: the frontend and the licence files."""
        return self.frontend.parent


def installed(data_dir: Path) -> Installed:
    """The installed web app; `NotInstalled` when there is none, or it is broken."""
    record_path = webui_dir(data_dir) / RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotInstalled("not installed (gateway webui install)") from None
    except (OSError, ValueError) as exc:
        raise NotInstalled(
            f"{record_path} is unreadable ({exc}); run gateway webui install"
        ) from None
    version, frontend = record.get("version"), record.get("frontend")
    if not isinstance(version, str) or not isinstance(frontend, str):
        raise NotInstalled(f"{record_path} names no version; run gateway webui install")
    path = webui_dir(data_dir) / frontend
    if not (path / "index.html").is_file():
        raise NotInstalled(
            f"{record_path} says {version}, but {path} has no index.html; run gateway webui install"
        )
    return Installed(version, path, str(record.get("wheel", "")))


def write_record(data_dir: Path, record: dict[str, str]) -> None:
    """installed.json, replaced at once (a server starting meanwhile reads the old
    record or the new one, never half of one)."""
    target = webui_dir(data_dir) / RECORD
    partial = target.with_name(f".{RECORD}.{os.getpid()}")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, target)
