"""The `gateway` command: serve, token, check-config, users, apikey, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway import __version__
from gateway.edge import redact
from gateway.settings import Loaded, SettingsError, describe, read

_STANDARD_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _ExtraFormatter(logging.Formatter):
    """Plain log lines with the record's `extra=` fields appended as key=value,
    secrets masked in the whole line (message, extras and traceback)."""

    def __init__(self, fmt: str, redactor: redact.Redactor) -> None:
        super().__init__(fmt)
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS}
        if extras:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        return self._redact(line)


def _setup_logging(loaded: Loaded) -> None:
    settings = loaded.settings
    redactor = redact.Redactor(
        [settings.secret_key or "", *settings.openai_api_keys, *settings.api_keys]
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        _ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redactor)
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Loaded:
    flags: dict[str, tuple[str, Any]] = {}
    if getattr(args, "host", None) is not None:
        flags["host"] = ("--host", args.host)
    if getattr(args, "port", None) is not None:
        flags["port"] = ("--port", args.port)
    return read(getattr(args, "config", None), flags=flags)


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    loaded = _load(args)
    _setup_logging(loaded)
    return serve(loaded)


def _token(args: argparse.Namespace) -> int:
    from gateway import preflight
    from gateway.edge.auth import Authenticator, StaticDirectory

    loaded = _load(args)
    key, where = preflight.signing_key(loaded, create=False)
    authenticator = Authenticator(key, StaticDirectory({}))
    ttl = args.ttl if args.ttl is not None else loaded.settings.jwt_expires_in_s
    claims = {"name": args.name} if args.name else {}
    print(authenticator.issue(args.user, ttl_s=ttl or None, **claims))
    print(f"gateway: signed with the key from {where}", file=sys.stderr)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import asyncio

    import yaml

    from gateway import preflight

    loaded = _load(args)
    preflight.prepare(loaded, create=False)
    preflight.probe_bind(loaded)
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
    for warning in loaded.warnings:
        print(f"gateway: warning: {warning}", file=sys.stderr)
    print(yaml.safe_dump(describe(loaded), sort_keys=True, allow_unicode=True), end="")
    for probe in probes:
        print(f"# reached {probe.field}: {probe.detail}")
    print("# configuration OK", file=sys.stderr)
    return 0


def _with_store(args: argparse.Namespace, action: Any) -> int:
    import asyncio

    from gateway import preflight
    from gateway.store import StoreUnavailable, open_store

    loaded = _load(args)
    preflight.prepare(loaded)
    settings = loaded.settings

    async def run() -> int:
        try:
            store = await open_store(settings.database_url, settings.data_dir)
        except StoreUnavailable as exc:
            field = "database_url" if settings.database_url else "data_dir"
            raise loaded.error(field, f"cannot open the database: {exc}") from None
        try:
            result: int = await action(store)
            return result
        finally:
            await store.close()

    return asyncio.run(run())


def _users_add(args: argparse.Namespace) -> int:
    from gateway.application.accounts import add_user
    from gateway.edge.passwords import Passwords
    from gateway.errors import GatewayError

    # One hash, no server to keep responsive: one thread is enough.
    passwords = Passwords(_load(args).settings.password_min_chars, threads=1)

    async def action(store: Any) -> int:
        try:
            user = await add_user(
                store,
                passwords,
                email=args.email,
                password=args.password,
                name=args.name,
                role=args.role,
            )
        except GatewayError as exc:
            print(f"gateway: {exc.message}", file=sys.stderr)
            return 1
        print(f"{user.id}\t{user.email}\t{user.role}")
        return 0

    try:
        # A password too short is refused before the database is opened (or made).
        passwords.check_new(args.password)
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    try:
        return _with_store(args, action)
    finally:
        passwords.close()


def _users_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        for user in await store.list_users():
            print(f"{user.id}\t{user.email or '-'}\t{user.role}\t{user.name}")
        return 0

    return _with_store(args, action)


def _users_remove(args: argparse.Namespace) -> int:
    from gateway.application.accounts import remove_user

    async def action(store: Any) -> int:
        user = await store.get_user_by_email(args.user) if "@" in args.user else None
        user = user or await store.get_user(args.user)
        if user is None:
            print(f"gateway: no user {args.user!r} (give an id or an email)", file=sys.stderr)
            return 1
        await remove_user(store, user.id)
        # Running gateways close the user's connections at their next recheck.
        print(f"removed {user.id}\t{user.email or '-'}")
        return 0

    return _with_store(args, action)


def _apikey_create(args: argparse.Namespace) -> int:
    from gateway.application.accounts import create_api_key

    async def action(store: Any) -> int:
        user = await store.get_user_by_email(args.user) if "@" in args.user else None
        user = user or await store.get_user(args.user)
        if user is None:
            print(f"gateway: no user {args.user!r} (give an id or an email)", file=sys.stderr)
            return 1
        print(await create_api_key(store, user.id, args.kind))
        return 0

    return _with_store(args, action)


def _doctor(args: argparse.Namespace) -> int:
    """Probe a deployment from outside; needs no settings (it is a client)."""
    import asyncio

    from gateway import doctor

    color = sys.stdout.isatty()

    def show(check: doctor.Check) -> None:
        # Each line as its check ends: --slow holds one for a minute or more.
        print(doctor.render_check(check, doctor.NAME_WIDTH, color), end="", flush=True)

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


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count of at least 1")
    return number


def _seconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give seconds ≥ 0 (0: no expiry)")
    return number


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit 2), like every other refusal here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand.
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="YAML settings file (environment wins)",
    )
    top = _Parser(prog="gateway", description=__doc__, parents=[common])
    top.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)

    token = commands.add_parser(
        "token", help="print a JWT signed with the configured secret", parents=[common]
    )
    token.add_argument("--user", required=True, help="user id (the token's 'id' claim)")
    token.add_argument("--name", help="display name (claim 'name')")
    token.add_argument("--ttl", type=_seconds, help="seconds until expiry; 0 for none")
    token.set_defaults(run=_token)

    check = commands.add_parser(
        "check-config", help="validate settings and print them", parents=[common]
    )
    check.add_argument("--host", help="as for serve")
    check.add_argument("--port", type=int, help="as for serve")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the database, Redis and each model server",
    )
    check.set_defaults(run=_check_config)

    users = commands.add_parser("users", help="manage users", parents=[common])
    users_commands = users.add_subparsers(dest="users_command", required=True, parser_class=_Parser)
    users_add = users_commands.add_parser(
        "add", help="create a user with a password", parents=[common]
    )
    users_add.add_argument("--email", required=True)
    users_add.add_argument("--password", required=True)
    users_add.add_argument("--name")
    users_add.add_argument("--role", choices=["admin", "user", "pending"])
    users_add.set_defaults(run=_users_add)
    users_list = users_commands.add_parser("list", help="list users", parents=[common])
    users_list.set_defaults(run=_users_list)
    users_remove = users_commands.add_parser(
        "remove",
        help="remove a user: their chats and keys go, their tokens are refused",
        parents=[common],
    )
    users_remove.add_argument("user", help="user id or email")
    users_remove.set_defaults(run=_users_remove)

    apikey = commands.add_parser("apikey", help="manage API keys", parents=[common])
    apikey_commands = apikey.add_subparsers(
        dest="apikey_command", required=True, parser_class=_Parser
    )
    create = apikey_commands.add_parser("create", help="print a new API key", parents=[common])
    create.add_argument("--user", required=True, help="user id or email")
    create.add_argument("--kind", choices=["openwebui", "ragflow"], default="openwebui")
    create.set_defaults(run=_apikey_create)

    doctor = commands.add_parser(
        "doctor",
        help="probe a deployment from outside: per check OK, or the fault and its fix",
        description="Probe a gateway deployment (through its proxy) as its clients reach it. "
        "Exit 0 when no check fails, 1 otherwise, 2 for a bad URL.",
    )
    doctor.add_argument("url", help="the gateway's URL, with its sub-path if any")
    doctor.add_argument("--token", help="a JWT or an API key; without it, chats are skipped")
    doctor.add_argument("--origin", help="a page origin whose CORS access to check")
    doctor.add_argument(
        "--slow", action="store_true", help="also hold a WebSocket idle (--idle-seconds)"
    )
    doctor.add_argument(
        "--idle-seconds",
        type=_positive,
        default=65.0,
        metavar="S",
        help="how long --slow holds the WebSocket without chat traffic (default 65)",
    )
    doctor.add_argument(
        "--polls",
        type=_count,
        default=10,
        metavar="N",
        help="Socket.IO polling sessions, to catch a proxy without stickiness (default 10)",
    )
    doctor.add_argument("--model", help="the model the chats use (default: the first listed)")
    doctor.add_argument(
        "--timeout",
        type=_positive,
        default=20.0,
        metavar="S",
        help="seconds each check may take (default 20)",
    )
    doctor.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (self-signed)"
    )
    doctor.set_defaults(run=_doctor)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
