"""What each `gateway` command does (the parser is `parser.py`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from gateway.cli import logs
from gateway.cli.store import load_settings, with_store
from gateway.settings import describe


def serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    loaded = load_settings(args)
    logs.setup(loaded)
    return serve(loaded)


def token(args: argparse.Namespace) -> int:
    from gateway import preflight
    from gateway.edge.auth import Authenticator, StaticDirectory

    loaded = load_settings(args)
    key, where = preflight.signing_key(loaded, create=False)
    authenticator = Authenticator(key, StaticDirectory({}))
    ttl = args.ttl if args.ttl is not None else loaded.settings.jwt_expires_in_s
    claims = {"name": args.name} if args.name else {}
    print(authenticator.issue(args.user, ttl_s=ttl or None, **claims))
    print(f"gateway: signed with the key from {where}", file=sys.stderr)
    return 0


def check_config(args: argparse.Namespace) -> int:
    import asyncio

    import yaml

    from gateway import preflight

    loaded = load_settings(args)
    preflight.prepare(loaded, create=False)
    held = preflight.probe_bind(loaded)
    probes = asyncio.run(preflight.connect(loaded)) if args.connect else []
    failed = [probe for probe in probes if not probe.ok]
    for probe in failed:
        # One line per service that cannot be reached, as for any bad setting.
        print(
            f"gateway: configuration error: {loaded.error(probe.field, probe.detail)}",
            file=sys.stderr,
        )
    if failed:
        return 2
    short = preflight.short_key(loaded)
    for warning in [*loaded.warnings, *([held] if held else []), *([short] if short else [])]:
        print(f"gateway: warning: {warning}", file=sys.stderr)
    print(yaml.safe_dump(describe(loaded), sort_keys=True, allow_unicode=True), end="")
    for probe in probes:
        print(f"# reached {probe.field}: {probe.detail}")
    print("# configuration OK", file=sys.stderr)
    return 0


def admin_stats(args: argparse.Namespace) -> int:
    """Every replica's connections, from a running gateway's `/ws/stats` (asked as an
    admin: with --token, or a short-lived token of the first admin in the store)."""
    import json
    import urllib.error
    import urllib.request

    url = _gateway_url(args)
    if url is None:
        return 2
    bearer = args.token or _admin_token(args)
    if bearer is None:
        return 1
    request = urllib.request.Request(
        f"{url}/ws/stats", headers={"Authorization": f"Bearer {bearer}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            stats = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"gateway: {url}/ws/stats answered HTTP {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"gateway: cannot read {url}/ws/stats: {exc}", file=sys.stderr)
        return 1
    if "replicas" not in stats.get("details", {}):
        # /ws/stats shows a user who is no admin the totals and their own only.
        print(
            "gateway: the token is not an admin's: the totals only (no replicas, no kinds); "
            "give an admin's --token for the rest",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    for line in stats_table(stats):
        print(line)
    return 0


def _admin_token(args: argparse.Namespace) -> str | None:
    """A one-minute token of the first admin in the store (None, said, if there is none)."""
    from gateway import preflight
    from gateway.edge.auth import Authenticator, StaticDirectory

    loaded = load_settings(args)
    made: list[str] = []

    async def first_admin(store: Any) -> int:
        admin = await store.first_admin()
        if admin is None:
            print("gateway: no admin user in the store; give --token", file=sys.stderr)
            return 1
        key, _ = preflight.signing_key(loaded, create=False)
        made.append(Authenticator(key, StaticDirectory({})).issue(admin.id, ttl_s=60))
        return 0

    with_store(args, first_admin)
    return made[0] if made else None


def _gateway_url(args: argparse.Namespace) -> str | None:
    """--url (None, said, if it is none a gateway can have), or where this config's
    gateway listens (on loopback when on every interface)."""
    from gateway.doctor.target import UsageError, gateway_url

    if args.url:
        try:
            return str(gateway_url(args.url)).rstrip("/")
        except UsageError as exc:
            print(f"gateway: --url {exc}", file=sys.stderr)
            return None
    settings = load_settings(args).settings
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}{settings.base_path}".rstrip("/")


def trace(args: argparse.Namespace) -> int:
    """A reply's live trace from a running gateway's plugin-debug socket, one line per
    record, until the reply ends (exit 0) or fails (exit 1)."""
    import asyncio
    import urllib.parse

    import aiohttp

    base = _gateway_url(args)
    if base is None:
        return 2
    bearer = args.token or _admin_token(args)
    if bearer is None:
        return 1
    url = base.replace("http", "ws", 1)
    url = f"{url}/api/v1/ws/plugin/debug/{urllib.parse.quote(args.message_id, safe='')}"

    async def follow() -> int:
        headers = {"Authorization": f"Bearer {bearer}"}
        timeout = aiohttp.ClientWSTimeout(ws_receive=args.timeout)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, headers=headers, timeout=timeout) as ws,
        ):
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                frame = message.json()
                records = frame["data"]["records"] if frame.get("type") == "debug_data" else [frame]
                for record in records:
                    print(trace_line(record), flush=True)
                    if record.get("type") in ("execution_complete", "execution_error", "error"):
                        return 0 if record["type"] == "execution_complete" else 1
            code = ws.close_code
        print(f"gateway: the trace socket closed ({code})", file=sys.stderr)
        return 1

    try:
        return asyncio.run(follow())
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"gateway: cannot follow {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1


def trace_line(record: dict[str, Any]) -> str:
    """`+  12.3 ms  step         first_token model=fake-model` (the data as key=value)."""
    import json

    data = dict(record.get("data") or {})
    at = data.pop("t_ms", None)
    when = f"+{at:>9.1f} ms" if isinstance(at, int | float) else " " * 13
    fields = " ".join(f"{key}={json.dumps(value)}" for key, value in data.items())
    return f"{when}  {record.get('type', '?'):<18} {fields}".rstrip()


def stats_table(stats: dict[str, Any]) -> list[str]:
    """`/ws/stats` as aligned rows: per replica, per kind, then the totals."""
    details = stats.get("details", {})
    rows: list[tuple[str, str]] = []
    if "replicas" in details:  # (an admin's view)
        rows += [("replica", "connections")]
        rows += [(name, str(n)) for name, n in details["replicas"].items()]
        rows += [("", ""), ("kind", "connections")]
        rows += [(name, str(n)) for name, n in sorted(details.get("kinds", {}).items())]
        rows += [("", "")]
    rows += [
        ("connections", str(stats.get("total_connections", 0))),
        ("users", str(stats.get("active_users", 0))),
        ("sessions", str(stats.get("active_sessions", 0))),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}".rstrip() for name, value in rows]


def webui_install(args: argparse.Namespace) -> int:
    from gateway.webui.install import InstallError, describe, install

    data_dir = load_settings(args).settings.data_dir
    if not data_dir.is_dir() and not data_dir.parent.is_dir():
        # As `gateway serve`: the data dir may be made, never its parents.
        print(
            f"gateway: the data dir {data_dir} cannot be made: {data_dir.parent} does not exist",
            file=sys.stderr,
        )
        return 1
    try:
        app = install(
            data_dir, args.version, wheel_dir=args.wheel_dir, progress=sys.stdout.isatty()
        )
    except InstallError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway: cannot install the web app into {data_dir}: {exc}", file=sys.stderr)
        return 1
    describe(app, print)
    return 0


def webui_status(args: argparse.Namespace) -> int:
    from gateway.webui.layout import NotInstalled, installed

    data_dir = load_settings(args).settings.data_dir
    try:
        app = installed(data_dir)
    except NotInstalled as exc:
        print(f"gateway: web app {exc}", file=sys.stderr)
        return 1
    print(f"{app.version}\t{app.frontend.resolve()}")
    return 0


def doctor(args: argparse.Namespace) -> int:
    """Probe a deployment from outside; needs no settings (it is a client)."""
    import asyncio

    from gateway import doctor

    color = sys.stdout.isatty()

    progress_shown = False

    def show(check: doctor.Check) -> None:
        # Each line as its check ends: --slow holds one for a minute or more.
        nonlocal progress_shown
        if progress_shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            progress_shown = False
        print(doctor.render_check(check, doctor.NAME_WIDTH, color), end="", flush=True)

    def progress(text: str) -> None:
        # On a terminal, one line rewritten in place; in a pipe or a log, nothing.
        nonlocal progress_shown
        if sys.stderr.isatty():
            print(f"\r\033[K  … {text}", end="", file=sys.stderr, flush=True)
            progress_shown = True

    try:
        report = asyncio.run(
            doctor.run(
                args.url,
                token=args.token,
                origin=args.origin,
                slow=args.slow,
                idle_seconds=args.idle_seconds,
                polls=args.polls,
                model=args.model,
                timeout=args.timeout,
                insecure=args.insecure,
                on_check=show,
                on_progress=progress,
            )
        )
        print(report.summary())
    except doctor.UsageError as exc:
        print(f"gateway doctor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Piped into `head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if report.faults else 0


def _absent(module: str) -> bool:
    """Whether `module` cannot be imported here (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def bench(args: argparse.Namespace) -> int:
    """`python -m bench` with the arguments given, in the checkout this gateway runs
    from: the suite is part of the source tree, not of an installed gateway."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").is_file():
        print(
            f"gateway: the benchmark suite is not here ({root / 'bench'} is missing): it "
            "runs from a source checkout, with the gateway installed from it (in the "
            "checkout: `pip install -e '.[bench]'`, or `python -m bench`)",
            file=sys.stderr,
        )
        return 2
    missing = [name for name in ("matplotlib", "tqdm", "psutil", "websockets") if _absent(name)]
    if missing:
        print(
            f"gateway: the benchmark suite needs the bench extra ({', '.join(missing)} "
            f"missing): `.tools/bin/uv sync --locked --extra bench` in {root}, or "
            "`pip install -e '.[bench]'`",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args], cwd=root)
