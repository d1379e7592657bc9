"""Persistence: users, API keys, chats (one row per message), tags, assistants.

`open_store(DATABASE_URL, data_dir)` picks the backend: empty → SQLite file
`data_dir/gateway.db`; `sqlite:///path`; `postgresql://…`.  Both run the
same queries (`sql/`, one module per noun) through a small driver layer
(`drivers.py`).  What it offers is one narrow protocol per aggregate
(`protocols.py`: `UserStore`, `ChatStore`, `AssistantStore`, `Pingable`);
`Store` is all of them, what `open_store` returns.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from gateway.settings import Settings
from gateway.store.errors import DuplicateKey, StoreError, StoreUnavailable, why_unavailable
from gateway.store.protocols import AssistantStore, ChatStore, Pingable, Store, UserStore
from gateway.store.records import (
    ApiKeyRecord,
    AssistantRecord,
    ChatRecord,
    MessageRecord,
    Revocation,
    UserRecord,
)

__all__ = [
    "ApiKeyRecord",
    "AssistantRecord",
    "AssistantStore",
    "ChatRecord",
    "ChatStore",
    "DuplicateKey",
    "MessageRecord",
    "Pingable",
    "Revocation",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UserRecord",
    "UserStore",
    "open_store",
    "sqlite_file",
]

SQLITE_FILE = "gateway.db"
# PostgreSQL connections per replica: the setting's default (its reasons are there).
DEFAULT_POOL_SIZE: int = Settings.model_fields["database_pool_size"].default


def sqlite_file(database_url: str, data_dir: Path) -> Path | None:
    """The SQLite file the settings name (None: PostgreSQL)."""
    if not database_url:
        return data_dir / SQLITE_FILE
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///"))
    return None


async def open_store(
    database_url: str, data_dir: Path, pool_size: int = DEFAULT_POOL_SIZE
) -> Store:
    """Open and migrate the store named by `database_url` (PostgreSQL: with at most
    `pool_size` connections)."""
    from gateway.store.drivers import Driver, PostgresDriver, SQLiteDriver
    from gateway.store.sql import SQLStore

    driver: Driver
    if (path := sqlite_file(database_url, data_dir)) is not None:
        driver = await SQLiteDriver.open(path)
    elif database_url.startswith(("postgresql://", "postgres://")):
        driver = await PostgresDriver.open(database_url, pool_size)
    else:
        raise ValueError(
            "DATABASE_URL must be empty (SQLite in DATA_DIR), sqlite:///<path> or postgresql://…"
        )
    store = SQLStore(driver)
    try:
        await store.migrate()
    except (OSError, sqlite3.Error, asyncpg.PostgresError) as exc:
        await driver.close()
        raise StoreUnavailable(f"cannot create the tables: {why_unavailable(exc)}") from None
    except BaseException:
        await driver.close()
        raise
    return store
