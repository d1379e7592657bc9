"""The `gateway` command line: every command, flag and help text."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NoReturn, TypeAlias

from gateway import __version__
from gateway.cli import commands, store
from gateway.webui.layout import DEFAULT_VERSION


def number(value: str) -> float:  # (argparse names a bad value by the type's name)
    number = float(value)
    if not 0 < number < math.inf:  # (nan too)
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count of at least 1")
    return number


def seconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give seconds ≥ 0 (0: no expiry)")
    return number


def user_id(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a user id must not be empty")
    return value.strip()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit 2), like every other refusal here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


DESCRIPTION = (
    "The chat gateway: serve it, make tokens, check settings, manage users and keys, "
    "install the web app, benchmark it."
)

Subparsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


def parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand.
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="YAML settings file (environment wins)",
    )
    top = _Parser(prog="gateway", description=DESCRIPTION, parents=[common])
    top.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _serving(sub, common)
    _accounts(sub, common)
    _admin(sub, common)
    _webui(sub, common)
    _doctor(sub)
    _bench(sub)
    return top


def _serving(sub: Subparsers, common: _Parser) -> None:
    serve = sub.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host", help="the address to listen on (default: GATEWAY_HOST, 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="the port to listen on (default: GATEWAY_PORT or PORT, 8080)"
    )
    serve.set_defaults(run=commands.serve)

    check = sub.add_parser(
        "check-config", help="validate settings and print them", parents=[common]
    )
    check.add_argument("--host", help="as for serve")
    check.add_argument("--port", type=int, help="as for serve")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the database, Redis and each model server",
    )
    check.set_defaults(run=commands.check_config)

    token = sub.add_parser(
        "token", help="print a JWT signed with the configured secret", parents=[common]
    )
    token.add_argument(
        "--user", required=True, type=user_id, help="user id (the token's 'id' claim)"
    )
    token.add_argument("--name", help="display name (claim 'name')")
    token.add_argument("--ttl", type=seconds, help="seconds until expiry; 0 for none")
    token.set_defaults(run=commands.token)


def _accounts(sub: Subparsers, common: _Parser) -> None:
    users = sub.add_parser("users", help="manage users", parents=[common])
    users_sub = users.add_subparsers(
        dest="users_command", required=True, parser_class=_Parser, metavar="{add,list,remove,role}"
    )
    add = users_sub.add_parser("add", help="create a user with a password", parents=[common])
    add.add_argument("--email", required=True)
    add.add_argument("--password", required=True)
    add.add_argument("--name")
    add.add_argument("--role", choices=["admin", "user", "pending"])
    add.set_defaults(run=store.users_add)
    listed = users_sub.add_parser("list", help="list users", parents=[common])
    listed.set_defaults(run=store.users_list)
    remove = users_sub.add_parser(
        "remove",
        help="remove a user: their chats and keys go, their tokens are refused",
        parents=[common],
    )
    remove.add_argument("user", help="user id or email")
    remove.set_defaults(run=store.users_remove)
    role = users_sub.add_parser(
        "role", help="change a user's role (pending → user lets them in)", parents=[common]
    )
    role.add_argument("user", help="user id or email")
    role.add_argument("role", choices=["admin", "user", "pending"])
    role.set_defaults(run=store.users_role)

    apikey = sub.add_parser("apikey", help="manage API keys", parents=[common])
    apikey_sub = apikey.add_subparsers(
        dest="apikey_command", required=True, parser_class=_Parser, metavar="{create,list,revoke}"
    )
    create = apikey_sub.add_parser("create", help="print a new API key", parents=[common])
    create.add_argument("--user", required=True, help="user id or email")
    create.add_argument("--kind", choices=["openwebui", "ragflow"], default="openwebui")
    create.set_defaults(run=store.apikey_create)
    listed = apikey_sub.add_parser(
        "list", help="list API keys (id, user, kind, hint, created, last used)", parents=[common]
    )
    listed.add_argument("--user", help="only this user's (id or email)")
    listed.set_defaults(run=store.apikey_list)
    revoke = apikey_sub.add_parser(
        "revoke", help="revoke one API key by its id (`apikey list`)", parents=[common]
    )
    revoke.add_argument("key_id", help="the key's id, as `gateway apikey list` shows it")
    revoke.set_defaults(run=store.apikey_revoke)


def _admin(sub: Subparsers, common: _Parser) -> None:
    admin = sub.add_parser("admin", help="look at a running deployment", parents=[common])
    admin_sub = admin.add_subparsers(
        dest="admin_command", required=True, parser_class=_Parser, metavar="{stats}"
    )
    stats = admin_sub.add_parser(
        "stats",
        help="connections of every replica, by replica and kind (asks a running gateway's "
        "/ws/stats)",
        parents=[common],
    )
    stats.add_argument(
        "--url", help="a gateway's URL (default: this config's host, port and base path)"
    )
    stats.add_argument(
        "--token", help="an admin's JWT or API key (default: one for the first admin)"
    )
    stats.add_argument("--json", action="store_true", help="print /ws/stats as JSON")
    stats.add_argument(
        "--timeout", type=number, default=10.0, metavar="S", help="seconds (default 10)"
    )
    stats.set_defaults(run=commands.admin_stats)

    trace = sub.add_parser(
        "trace",
        help="follow a reply's live trace (steps, model server calls, its end)",
        parents=[common],
    )
    trace.add_argument("message_id", help="the reply's message id (Nadoo's execution id)")
    trace.add_argument(
        "--url", help="the replica running the reply (default: this config's host and port)"
    )
    trace.add_argument(
        "--token", help="the reply owner's or an admin's token (default: the first admin's)"
    )
    trace.add_argument(
        "--timeout",
        type=number,
        default=120.0,
        metavar="S",
        help="seconds without a record before giving up (default 120)",
    )
    trace.set_defaults(run=commands.trace)


def _webui(sub: Subparsers, common: _Parser) -> None:
    webui = sub.add_parser(
        "webui", help="install Open WebUI's web app for gateway serve to serve", parents=[common]
    )
    webui_sub = webui.add_subparsers(
        dest="webui_command", required=True, parser_class=_Parser, metavar="{install,status}"
    )
    install = webui_sub.add_parser(
        "install",
        help="fetch the open-webui wheel with pip and unpack its built frontend into the data dir",
        parents=[common],
    )
    install.add_argument(
        "--version",
        default=DEFAULT_VERSION,
        help=f"the Open WebUI release (default {DEFAULT_VERSION}, the one whose API the "
        "gateway speaks)",
    )
    install.add_argument(
        "--wheel-dir",
        type=Path,
        metavar="DIR",
        help="keep the downloaded wheel in DIR, and reuse one already there",
    )
    install.set_defaults(run=commands.webui_install)
    status = webui_sub.add_parser(
        "status", help="which version is installed, and where", parents=[common]
    )
    status.set_defaults(run=commands.webui_status)


def _doctor(sub: Subparsers) -> None:
    doctor = sub.add_parser(
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
        type=number,
        default=65.0,
        metavar="S",
        help="how long --slow holds the WebSocket without chat traffic (default 65)",
    )
    doctor.add_argument(
        "--polls",
        type=count,
        default=10,
        metavar="N",
        help="Socket.IO polling sessions, to catch a proxy without stickiness (default 10)",
    )
    doctor.add_argument("--model", help="the model the chats use (default: the first listed)")
    doctor.add_argument(
        "--timeout",
        type=number,
        default=20.0,
        metavar="S",
        help="seconds each check may take (default 20)",
    )
    doctor.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (self-signed)"
    )
    doctor.set_defaults(run=commands.doctor)


def _bench(sub: Subparsers) -> None:
    bench = sub.add_parser(
        "bench",
        add_help=False,  # `gateway bench --help` is the suite's own help
        help="run the benchmark suite (`python -m bench`, from a source checkout): "
        "every argument goes to it; `gateway bench --help` lists them",
    )
    bench.set_defaults(run=commands.bench)
