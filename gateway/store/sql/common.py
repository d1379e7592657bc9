"""What the SQL modules share: the base holding the driver, JSON columns, and
unique-constraint violations raised as `DuplicateKey`.

JSON columns (`settings`, `meta`, `extra`, `fields`, `config`) are TEXT holding
compact JSON (`gateway/jsonwire.py`), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from gateway import jsonwire
from gateway.store.drivers import Driver, Row
from gateway.store.errors import DuplicateKey

T = TypeVar("T")


def dumps(value: Any) -> str:
    return jsonwire.dumps(value)


def qualified(columns: str, alias: str) -> str:
    """`"a, b"` as `"x.a, x.b"`, for a query that joins or aliases its table."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


@contextmanager
def duplicate_as(message: str) -> Iterator[None]:
    """A unique-constraint violation (sqlite3 or asyncpg) becomes `DuplicateKey(message)`."""
    try:
        yield
    except Exception as exc:
        text = f"{type(exc).__name__} {exc}".lower()
        if "unique" in text or "integrity" in text:
            raise DuplicateKey(message) from None
        raise


class Tables:
    """The base of each aggregate's SQL class: the driver they all share."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def _first(self, parse: Callable[[Row], T], sql: str, *args: Any) -> T | None:
        rows = await self.db.fetch(sql, args)
        return parse(rows[0]) if rows else None
