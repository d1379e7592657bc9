"""Store errors, kept apart so drivers and the store can both raise them."""

from __future__ import annotations

import socket
import sqlite3

import asyncpg


class StoreError(Exception):
    pass


class DuplicateKey(StoreError):
    """A row not written: its id, email, share id or (user, name) is taken already
    (a unique constraint refused it).  What a route answers is the application's."""


class StoreUnavailable(StoreError):
    """The database cannot be opened; the message is one line saying why."""


def why_unavailable(exc: BaseException) -> str:
    """One line for an operator from what connecting to the database raised."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{exc} (create it, e.g. `createdb <name>`, or fix the URL)"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"{exc} (check the user and password in the URL)"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"{exc} (create the role or fix the user in the URL)"
    if isinstance(exc, asyncpg.PostgresError):
        return f"PostgreSQL refused: {exc}"
    if isinstance(exc, asyncpg.InterfaceError):
        return f"the URL's options cannot be used: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"the host name cannot be resolved ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout (is the host reachable?)"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and "Connect call failed" in str(exc)
    ):
        return "connection refused: nothing listens on that host and port (is PostgreSQL running?)"
    if isinstance(exc, sqlite3.Error):
        return f"SQLite cannot open it ({exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"
