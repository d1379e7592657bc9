"""The `gateway` command: serve, token, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import settings as settings_module
from gateway.settings import Settings, SettingsError

_STANDARD_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _ExtraFormatter(logging.Formatter):
    """Plain log lines with the record's `extra=` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS}
        if extras:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        return line


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Settings:
    settings = settings_module.load(getattr(args, "config", None))
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return settings.model_copy(update=overrides) if overrides else settings


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.app import build_app

    settings = _load(args)
    _setup_logging(settings.log_level)
    app = build_app(settings)
    log = logging.getLogger("gateway")
    log.info(
        "gateway listening on http://%s:%d (data dir %s)",
        settings.host,
        settings.port,
        settings.data_dir.resolve(),
    )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # A client that disconnects cancels its handler, so the upstream
        # request behind it is closed at once, not at the next write.
        handler_cancellation=True,
        print=None,
        access_log=None,
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.app import secret_key
    from gateway.auth import Authenticator, StaticDirectory

    settings = _load(args)
    authenticator = Authenticator(secret_key(settings), StaticDirectory({}))
    ttl = args.ttl if args.ttl is not None else settings.jwt_expires_in_s
    claims = {"name": args.name} if args.name else {}
    print(authenticator.issue(args.user, ttl_s=ttl if ttl and ttl > 0 else None, **claims))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import yaml

    settings = _load(args)
    if settings.jwt_public_key_file is not None and not settings.jwt_public_key_file.is_file():
        path = str(settings.jwt_public_key_file)
        raise SettingsError(f"GATEWAY_JWT_PUBLIC_KEY_FILE={path!r} is not a readable file")
    print(yaml.safe_dump(settings_module.describe(settings), sort_keys=True), end="")
    print("# configuration OK", file=sys.stderr)
    return 0


def _with_store(args: argparse.Namespace, action: Any) -> int:
    import asyncio

    from gateway.store import open_store

    settings = _load(args)

    async def run() -> int:
        store = await open_store(settings.database_url, settings.data_dir)
        try:
            result: int = await action(store)
            return result
        finally:
            await store.close()

    return asyncio.run(run())


def _users_add(args: argparse.Namespace) -> int:
    from gateway.errors import GatewayError
    from gateway.users import add_user

    async def action(store: Any) -> int:
        try:
            user = await add_user(
                store, email=args.email, password=args.password, name=args.name, role=args.role
            )
        except GatewayError as exc:
            print(f"gateway: {exc.message}", file=sys.stderr)
            return 1
        print(f"{user.id}\t{user.email}\t{user.role}")
        return 0

    return _with_store(args, action)


def _users_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        for user in await store.list_users():
            print(f"{user.id}\t{user.email or '-'}\t{user.role}\t{user.name}")
        return 0

    return _with_store(args, action)


def _apikey_create(args: argparse.Namespace) -> int:
    from gateway.users import create_api_key

    async def action(store: Any) -> int:
        user = await store.get_user_by_email(args.user) if "@" in args.user else None
        user = user or await store.get_user(args.user)
        if user is None:
            print(f"gateway: no user {args.user!r} (give an id or an email)", file=sys.stderr)
            return 1
        print(await create_api_key(store, user.id, args.kind))
        return 0

    return _with_store(args, action)


def parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="YAML settings file (environment wins)",
    )
    top = argparse.ArgumentParser(prog="gateway", description=__doc__, parents=[common])
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)

    token = commands.add_parser(
        "token", help="print a JWT signed with the configured secret", parents=[common]
    )
    token.add_argument("--user", required=True, help="user id (the token's 'id' claim)")
    token.add_argument("--name", help="display name (claim 'name')")
    token.add_argument("--ttl", type=int, help="seconds until expiry; 0 for none")
    token.set_defaults(run=_token)

    check = commands.add_parser(
        "check-config", help="validate settings and print them", parents=[common]
    )
    check.set_defaults(run=_check_config)

    users = commands.add_parser("users", help="manage users", parents=[common])
    users_commands = users.add_subparsers(dest="users_command", required=True)
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

    apikey = commands.add_parser("apikey", help="manage API keys", parents=[common])
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_commands.add_parser("create", help="print a new API key", parents=[common])
    create.add_argument("--user", required=True, help="user id or email")
    create.add_argument("--kind", choices=["openwebui", "ragflow"], default="openwebui")
    create.set_defaults(run=_apikey_create)
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
