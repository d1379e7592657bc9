"""Open WebUI 0.12.4 as a peer to benchmark against: installed once, started offline.

    from bench import peer_openwebui
    venv = peer_openwebui.ensure()                      # first use: ~3 GB, minutes
    proc = peer_openwebui.start(port, "http://127.0.0.1:UP/v1", data_dir)
    tokens = peer_openwebui.sign_up(f"http://127.0.0.1:{port}", 50)
    cpu = sum(cpu_seconds(pid) for pid in peer_openwebui.pids(proc))

The virtualenv is `~/.cache/gateway-bench/openwebui-0.12.4` (or
`$GATEWAY_BENCH_OPENWEBUI_VENV`), made with `python3 -m venv`, into which
`torch==2.13.0` is installed first — the CPU build: a resolver that would bring
a CUDA build (a version without `+cpu`, or `nvidia-*` packages) is pointed at
PyTorch's CPU index instead — and then `open-webui==0.12.4`.

`start` runs `open-webui serve` (one uvicorn worker in that same process) with
an environment that keeps it offline and comparable with the gateway: its only
model server is the bench's paced upstream, no Ollama, no background task
generation (title, tags, follow-ups, autocomplete, search and retrieval
queries), no memories, no local embedding model (none is on disk, and offline
none is fetched), no telemetry, WARNING logs.  Every variable name was read in
the installed `open_webui/env.py` and `open_webui/config.py`.

`sign_up` makes users as the web app's sign-up page does (POST
/api/v1/auths/signup).  Open WebUI makes the first one admin and then turns
sign-up off (`routers/auths.py` `signup_handler`: `ui.enable_signup` False),
so the others are added by that admin (POST /api/v1/auths/add, role `user`),
which answers with their session token as sign-up does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

VERSION = "0.12.4"
TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_VENV = Path(
    os.environ.get("GATEWAY_BENCH_OPENWEBUI_VENV")
    or Path.home() / ".cache" / "gateway-bench" / f"openwebui-{VERSION}"
)
START_TIMEOUT_S = 300.0
PASSWORD = "bench-password-1"


# -- install ------------------------------------------------------------------------
def installed(venv: Path = DEFAULT_VENV) -> bool:
    """`<venv>/bin/open-webui` is there and pip says open-webui is VERSION."""
    if not (venv / "bin" / "open-webui").exists():
        return False
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "open-webui"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"\nVersion: {VERSION}\n" in f"\n{shown.stdout}"


def _pip(venv: Path, args: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ pip {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"pip {' '.join(args)} failed ({done.returncode}):\n{tail}")


def _torch_resolves_to_cpu(venv: Path) -> bool:
    """What `pip install torch==2.13.0` would install, asked without installing:
    True when it is a `+cpu` build and brings no `nvidia-*` package."""
    python = str(venv / "bin" / "python")
    report = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", TORCH],
        capture_output=True,
        text=True,
        check=False,
    )
    if report.returncode != 0:
        return False
    try:
        items = json.loads(report.stdout)["install"]
    except (ValueError, KeyError):
        return False
    for item in items:
        name = str(item["metadata"]["name"]).lower()
        if name.startswith("nvidia-"):
            return False
        if name == "torch" and "+cpu" not in str(item["metadata"]["version"]):
            return False
    return True


def ensure(venv: Path = DEFAULT_VENV, progress: Callable[[str], None] = print) -> Path:
    """The virtualenv with Open WebUI VERSION, made on first use; returns it."""
    if installed(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"openwebui-{VERSION}-install.log"
    if not (venv / "bin" / "python").exists():
        progress(f"creating {venv}")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    if _torch_resolves_to_cpu(venv):
        progress(f"installing {TORCH} (CPU build) — log: {log}")
        _pip(venv, ["install", TORCH], log)
    else:
        progress(f"installing {TORCH} from PyTorch's CPU index — log: {log}")
        _pip(venv, ["install", "--index-url", TORCH_CPU_INDEX, TORCH], log)
    progress(f"installing open-webui=={VERSION} (a few GB, minutes) — log: {log}")
    _pip(venv, ["install", f"open-webui=={VERSION}"], log)
    if not installed(venv):
        raise RuntimeError(f"open-webui {VERSION} is not in {venv} after installing it; see {log}")
    return venv


# -- run ----------------------------------------------------------------------------
def environment(port: int, upstream_url: str, data_dir: Path) -> dict[str, str]:
    """Open WebUI's settings for the bench (names as in open_webui/env.py, config.py)."""
    return {
        # env.py
        "DATA_DIR": str(data_dir),
        "WEBUI_SECRET_KEY": "bench-openwebui-secret-" + "x" * 24,
        "GLOBAL_LOG_LEVEL": "WARNING",
        "UVICORN_WORKERS": "1",
        "OFFLINE_MODE": "true",  # HF_HUB_OFFLINE=1, no version check (env.py)
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "BYPASS_MODEL_ACCESS_CONTROL": "true",
        "ENABLE_PERSISTENT_CONFIG": "true",  # the default; the data dir is new each run
        # config.py: the one model server, the bench's upstream
        "OPENAI_API_BASE_URL": upstream_url,
        "OPENAI_API_KEY": "bench",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_DIRECT_CONNECTIONS": "false",
        "ENABLE_BASE_MODELS_CACHE": "false",
        # config.py: users
        "ENABLE_SIGNUP": "true",
        "DEFAULT_USER_ROLE": "user",
        # config.py: no background task generation
        "ENABLE_TITLE_GENERATION": "false",
        "ENABLE_TAGS_GENERATION": "false",
        "ENABLE_FOLLOW_UP_GENERATION": "false",
        "ENABLE_AUTOCOMPLETE_GENERATION": "false",
        "ENABLE_SEARCH_QUERY_GENERATION": "false",
        "ENABLE_RETRIEVAL_QUERY_GENERATION": "false",
        "ENABLE_IMAGE_PROMPT_GENERATION": "false",
        # config.py: nothing a plain chat turn does not need
        "ENABLE_MEMORIES": "false",
        "ENABLE_WEB_SEARCH": "false",
        "ENABLE_CODE_INTERPRETER": "false",
        "ENABLE_EVALUATION_ARENA_MODELS": "false",
        # config.py: no local embedding model is loaded at start (none is on disk, and
        # offline it could not be fetched: sentence-transformers is not even imported)
        "RAG_EMBEDDING_MODEL": "",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
        "WHISPER_MODEL_AUTO_UPDATE": "false",
        # libraries: never the network
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "false",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
        "PYTHONUNBUFFERED": "1",
    }


def start(
    port: int,
    upstream_url: str,
    data_dir: Path,
    venv: Path = DEFAULT_VENV,
    timeout_s: float = START_TIMEOUT_S,
) -> subprocess.Popen[bytes]:
    """`open-webui serve` on 127.0.0.1:port in front of `upstream_url` (…/v1), once it
    answers /health; its output in data_dir/open-webui.log."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "open-webui.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    env.update(environment(port, upstream_url, data_dir))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=data_dir,  # `serve` may write .webui_secret_key into its working directory
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    health = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(health, timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    exited = proc.poll()
    if exited is None:
        proc.kill()
        proc.wait(10)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
    why = f"exited with {exited}" if exited is not None else f"no answer in {timeout_s:.0f} s"
    raise RuntimeError(f"Open WebUI {why} at {health}; the end of {log_path}:\n{tail}")


def pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The serving process and all its descendants, from /proc.  `open-webui serve`
    runs uvicorn with one worker in its own process, so this is usually [proc.pid]."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [proc.pid]
    while todo:
        pid = todo.pop()
        if pid in found or not Path(f"/proc/{pid}").exists():
            continue
        found.append(pid)
        todo += children.get(pid, [])
    return found


# -- users --------------------------------------------------------------------------
def _post(url: str, body: Any, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url}: HTTP {exc.code} {exc.read()[:300]!r}") from exc


def sign_up(url: str, n: int) -> list[str]:
    """n new users' session tokens (bearer JWTs whose `id` is the user's); the first
    is the admin.  The email addresses are new each call."""
    if n < 1:
        return []
    run = f"{time.time_ns():x}"[-8:]

    def user(index: int) -> dict[str, str]:
        return {
            "name": f"Bench {index}",
            "email": f"bench-{run}-{index}@example.com",
            "password": PASSWORD,
        }

    admin = _post(f"{url}/api/v1/auths/signup", user(0))
    tokens = [str(admin["token"])]

    def add(index: int) -> str:
        made = _post(f"{url}/api/v1/auths/add", {**user(index), "role": "user"}, tokens[0])
        return str(made["token"])

    # Each one is a bcrypt hash on the server: a few at a time.
    with ThreadPoolExecutor(4) as pool:
        tokens += list(pool.map(add, range(1, n)))
    return tokens
