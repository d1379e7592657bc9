"""The commands that work on the gateway's store: `users …` and `apikey …` (and the
store as `admin stats` finds its first admin).  The store is found as the server
finds it (`DATA_DIR`, `DATABASE_URL` or `--config`); only `users add` makes one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.settings import Loaded, read


def load_settings(args: argparse.Namespace) -> Loaded:
    """The settings of a command: its --config, --host and --port over the environment."""
    flags: dict[str, tuple[str, Any]] = {}
    if getattr(args, "host", None) is not None:
        flags["host"] = ("--host", args.host)
    if getattr(args, "port", None) is not None:
        flags["port"] = ("--port", args.port)
    return read(getattr(args, "config", None), flags=flags)


def with_store(args: argparse.Namespace, action: Any, *, may_make: bool = False) -> int:
    """`action(store)` on the gateway's store.  Only a command that adds to it
    (`may_make`: users add) makes an SQLite store that is not there yet; any other
    refuses, making nothing: run with another DATA_DIR than the server's, it would
    list, change or find nothing, unseen."""
    import asyncio

    from gateway import preflight
    from gateway.store import StoreUnavailable, open_store, sqlite_file

    loaded = load_settings(args)
    settings = loaded.settings
    sqlite = sqlite_file(settings.database_url, settings.data_dir)
    made = sqlite is not None and not sqlite.exists()
    preflight.prepare(loaded, create=may_make or not made)
    if made and not may_make:
        print(
            f"gateway: no database at {sqlite}: run this where the gateway runs (its "
            "DATA_DIR or --config), or give it the gateway's DATABASE_URL",
            file=sys.stderr,
        )
        return 1

    async def run() -> int:
        try:
            store = await open_store(
                settings.database_url, settings.data_dir, settings.database_pool_size
            )
        except StoreUnavailable as exc:
            field = "database_url" if settings.database_url else "data_dir"
            raise loaded.error(field, f"cannot open the database: {exc}") from None
        if made:
            # A command run with another DATA_DIR than the server's would otherwise
            # work, unseen, on a store of its own.
            print(
                f"gateway: note: no database was at {sqlite}: a new one was made; if a "
                "gateway already runs, give this command its DATA_DIR or DATABASE_URL",
                file=sys.stderr,
            )
        try:
            result: int = await action(store)
            return result
        finally:
            await store.close()

    return asyncio.run(run())


async def _find_user(store: Any, who: str) -> Any:
    """A user by id or email; None (and the reason on stderr) when there is none."""
    user = await store.get_user_by_email(who) if "@" in who else None
    user = user or await store.get_user(who)
    if user is None:
        print(f"gateway: no user {who!r} (give an id or an email)", file=sys.stderr)
    return user


def users_add(args: argparse.Namespace) -> int:
    from gateway.application.accounts import add_user, check_new_user
    from gateway.edge.passwords import Passwords
    from gateway.errors import GatewayError

    # One hash, no server to keep responsive: one thread is enough.
    passwords = Passwords(load_settings(args).settings.password_min_chars, threads=1)

    async def action(store: Any) -> int:
        role = args.role
        if role is None and not any(u.role == "admin" for u in await store.list_users()):
            # Users a token made first (`gateway token`, an identity provider's JWTs)
            # are no admins: the operator's first `users add` makes one.
            role = "admin"
        try:
            user = await add_user(
                store,
                passwords,
                email=args.email,
                password=args.password,
                name=args.name,
                role=role,
            )
        except GatewayError as exc:
            print(f"gateway: {exc.message}", file=sys.stderr)
            return 1
        print(f"{user.id}\t{user.email}\t{user.role}")
        return 0

    try:
        # What would be refused is, before the database is opened (or made).
        check_new_user(
            passwords, email=args.email, password=args.password, name=args.name, role=args.role
        )
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    try:
        return with_store(args, action, may_make=True)
    finally:
        passwords.close()


def users_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        print("id\temail\trole\tname")  # as `apikey list`: a header, then a row a user
        for user in await store.list_users():
            print(f"{user.id}\t{user.email or '-'}\t{user.role}\t{user.name}")
        return 0

    return with_store(args, action)


def users_remove(args: argparse.Namespace) -> int:
    from gateway.application.accounts import remove_user

    async def action(store: Any) -> int:
        user = await _find_user(store, args.user)
        if user is None:
            return 1
        await remove_user(store, user.id)
        # Running gateways close the user's connections at their next recheck.
        print(f"removed {user.id}\t{user.email or '-'}")
        return 0

    return with_store(args, action)


def users_role(args: argparse.Namespace) -> int:
    from gateway.application.accounts import set_role

    async def action(store: Any) -> int:
        user = await _find_user(store, args.user)
        if user is None:
            return 1
        await set_role(store, user.id, args.role)
        # Running gateways take it within a few seconds (they remember users briefly).
        print(f"{user.id}\t{user.email or '-'}\t{args.role}")
        return 0

    return with_store(args, action)


def apikey_create(args: argparse.Namespace) -> int:
    from gateway.application.accounts import create_api_key, revoke_api_keys

    async def action(store: Any) -> int:
        user = await _find_user(store, args.user)
        if user is None:
            return 1
        if args.kind == "openwebui":
            # One `sk-` key per user, as over REST: the one before is revoked.
            revoked = await revoke_api_keys(store, user.id, args.kind)
            if revoked:
                print(
                    f"gateway: the user's earlier sk- key ({len(revoked)}) revoked: refused "
                    "by running gateways within GATEWAY_ACCESS_RECHECK_S",
                    file=sys.stderr,
                )
        print(await create_api_key(store, user.id, args.kind))
        return 0

    return with_store(args, action)


def _when(seconds: int | None) -> str:
    import datetime

    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def apikey_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        user_id = None
        if args.user:
            user = await _find_user(store, args.user)
            if user is None:
                return 1
            user_id = user.id
        print("id\tuser\tkind\thint\tcreated\tlast used")
        for key in await store.list_api_keys(user_id):
            shown = key.as_dict()
            print(
                f"{key.id}\t{key.user_id}\t{key.kind or '-'}\t{key.hint or '-'}\t"
                f"{_when(shown['created_at'])}\t{_when(shown['last_used_at'])}"
            )
        return 0

    return with_store(args, action)


def apikey_revoke(args: argparse.Namespace) -> int:
    import time

    async def action(store: Any) -> int:
        revoked = await store.revoke_api_key(args.key_id, int(time.time() * 1000))
        if not revoked:
            print(f"gateway: no API key {args.key_id!r} (see gateway apikey list)", file=sys.stderr)
            return 1
        # Running gateways refuse it at once and close its connections at their
        # next recheck (GATEWAY_ACCESS_RECHECK_S).
        print(f"revoked {args.key_id}\t{revoked[0].user_id}")
        return 0

    return with_store(args, action)
