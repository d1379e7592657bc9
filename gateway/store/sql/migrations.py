"""The schema's migrations: the numbered files in `gateway/store/schema/`.

    schema_migrations  version (the file's number), name (the file's), applied_at (s)

Each file (`0001_initial.sql`, …) is applied once, in order, in one
transaction with the others still missing, and recorded.  On PostgreSQL a
transaction-level advisory lock makes replicas that start together take
turns; on SQLite the transaction's write lock does.
"""

from __future__ import annotations

import time
from importlib import resources
from importlib.abc import Traversable

from gateway.store.drivers import Driver

MIGRATION_LOCK_ID = 0x6761_7465  # "gate"
SCHEMA_PACKAGE = "gateway.store.schema"


def _files() -> list[Traversable]:
    return sorted(
        (
            entry
            for entry in resources.files(SCHEMA_PACKAGE).iterdir()
            if entry.name.endswith(".sql")
        ),
        key=lambda entry: entry.name,
    )


async def migrate(db: Driver) -> None:
    """Apply the migrations not applied yet."""
    files = _files()
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        applied = {int(row[0]) for row in await tx.fetch("SELECT version FROM schema_migrations")}
        for entry in files:
            version = int(entry.name.split("_", 1)[0])
            if version in applied:
                continue
            await tx.executescript(entry.read_text(encoding="utf-8"))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, entry.name, int(time.time())),
            )


async def applied(db: Driver) -> list[tuple[int, str]]:
    """The migrations applied: (version, file name), in order."""
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(int(row[0]), str(row[1])) for row in rows]
