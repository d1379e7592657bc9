"""Users, their API keys, and access taken back, on SQL.

    users        id, name, email (unique, lower-case), role, password_hash,
                 profile_image_url, created_at, updated_at (s), settings (JSON)
    api_keys     key_hash (the key itself is never stored), user_id, created_at,
                 kind ('openwebui' | 'ragflow'; NULL for keys older than kinds),
                 hint (its first and last characters), last_used_ms; listed by
                 id, the first KEY_ID_CHARS hex digits of the hash
    revocations  (user_id, key_hash) → reason, at_ms; key_hash '' is the whole
                 user removed, any other one API key revoked

Removing a user takes their chats, tags and assistants with them, in the same
transaction (the statements are the chats' and assistants' own).
"""

from __future__ import annotations

import dataclasses
import json

from gateway.store.drivers import Row, Statement
from gateway.store.records import ApiKeyRecord, Revocation, UserRecord
from gateway.store.sql.assistants import delete_assistants_of
from gateway.store.sql.chats import delete_chats_of
from gateway.store.sql.common import Tables, dumps, duplicate_as, qualified
from gateway.store.sql.tags import delete_tags_of

USER_COLUMNS = (
    "id, name, email, role, password_hash, profile_image_url, created_at, updated_at, settings"
)


# A key's id: the start of its hash (64 hex digits), enough to tell keys apart.
KEY_ID_CHARS = 12


def _user(row: Row) -> UserRecord:
    return UserRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7]), json.loads(row[8])
    )


def _email(user: UserRecord) -> str | None:
    return user.email.lower() if user.email else None


def _user_exists(user: UserRecord) -> str:
    return f"user {user.id!r} or email {_email(user)!r} exists already"


def _user_insert(user: UserRecord) -> Statement:
    return (
        f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user.id,
            user.name,
            _email(user),
            user.role,
            user.password_hash,
            user.profile_image_url,
            user.created_at,
            user.updated_at,
            dumps(user.settings),
        ),
    )


def _revocation_upsert(revocation: Revocation) -> Statement:
    # A second removal or revocation only moves the time on.
    return (
        "INSERT INTO revocations (user_id, key_hash, reason, at_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, key_hash) DO UPDATE SET reason = excluded.reason, "
        "at_ms = excluded.at_ms",
        (revocation.user_id, revocation.key_hash, revocation.reason, revocation.at_ms),
    )


class SQLUsers(Tables):
    """`UserStore` on SQL."""

    # -- users -------------------------------------------------------------
    async def create_user(self, user: UserRecord) -> None:
        with duplicate_as(_user_exists(user)):
            await self.db.execute(*_user_insert(user))

    async def create_user_first_admin(
        self, user: UserRecord, *, only_first: bool = False
    ) -> UserRecord | None:
        with duplicate_as(_user_exists(user)):
            async with self.db.transaction() as tx:
                if self.db.dialect == "postgresql":
                    # Conflicts with every other writer of users (and with itself), not
                    # with readers: no row can appear between the look and the insert.
                    await tx.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                # SQLite: transaction() began IMMEDIATE, which holds the write lock.
                if not await tx.fetch("SELECT 1 FROM users LIMIT 1"):
                    user = dataclasses.replace(user, role="admin")
                elif only_first:
                    return None
                await tx.execute(*_user_insert(user))
        return user

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._first(_user, f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        return await self._first(
            _user, f"SELECT {USER_COLUMNS} FROM users WHERE email = ?", email.lower()
        )

    async def count_users(self) -> int:
        rows = await self.db.fetch("SELECT COUNT(*) FROM users")
        return int(rows[0][0])

    async def first_admin(self) -> UserRecord | None:
        return await self._first(
            _user,
            f"SELECT {USER_COLUMNS} FROM users WHERE role = ? ORDER BY created_at, id LIMIT 1",
            "admin",
        )

    async def list_users(self) -> list[UserRecord]:
        rows = await self.db.fetch(f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id")
        return [_user(row) for row in rows]

    async def change_user(self, user: UserRecord, *columns: str) -> None:
        """Only the named columns of the user's row written, from `user`: an admin's
        role change and the user's own settings or profile, made at once, each keep
        what the other wrote."""
        known = [column.strip() for column in USER_COLUMNS.split(",")][1:]
        if not columns or any(column not in known for column in columns):
            raise ValueError(f"not columns of a user's row: {columns!r}")
        values = [getattr(user, column) for column in columns]
        values = [
            dumps(value) if column == "settings" else _email(user) if column == "email" else value
            for column, value in zip(columns, values, strict=True)
        ]
        assignments = ", ".join(f"{column} = ?" for column in columns)
        await self.db.execute(f"UPDATE users SET {assignments} WHERE id = ?", (*values, user.id))

    async def update_user(self, user: UserRecord) -> None:
        await self.db.execute(
            "UPDATE users SET name = ?, email = ?, role = ?, password_hash = ?, profile_image_url = ?, "
            "updated_at = ?, settings = ? WHERE id = ?",
            (
                user.name,
                _email(user),
                user.role,
                user.password_hash,
                user.profile_image_url,
                user.updated_at,
                dumps(user.settings),
                user.id,
            ),
        )

    # -- api keys ----------------------------------------------------------
    async def add_api_key(
        self,
        key_hash: str,
        user_id: str,
        created_at: int,
        kind: str = "openwebui",
        hint: str | None = None,
    ) -> None:
        await self.db.execute(
            "INSERT INTO api_keys (key_hash, user_id, created_at, kind, hint) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_hash, user_id, created_at, kind, hint),
        )

    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        columns = "key_hash, user_id, kind, hint, created_at, last_used_ms"
        if user_id is None:
            rows = await self.db.fetch(
                f"SELECT {columns} FROM api_keys ORDER BY created_at DESC, key_hash", ()
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {columns} FROM api_keys WHERE user_id = ? "
                "ORDER BY created_at DESC, key_hash",
                (user_id,),
            )
        return [
            ApiKeyRecord(
                row[0][:KEY_ID_CHARS],
                row[1],
                row[2],
                row[3],
                int(row[4]),
                None if row[5] is None else int(row[5]),
            )
            for row in rows
        ]

    async def key_used(self, key_hash: str, at_ms: int) -> None:
        await self.db.execute(
            "UPDATE api_keys SET last_used_ms = ? WHERE key_hash = ?", (at_ms, key_hash)
        )

    async def user_for_api_key(self, key_hash: str) -> UserRecord | None:
        return await self._first(
            _user,
            f"SELECT {qualified(USER_COLUMNS, 'u')} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?",
            key_hash,
        )

    # -- access taken back ---------------------------------------------------
    async def remove_user(self, user_id: str, at_ms: int) -> list[Revocation]:
        revocation = Revocation(user_id, "", "removed", at_ms)
        async with self.db.transaction() as tx:
            await delete_chats_of(tx, user_id)
            await delete_tags_of(tx, user_id)
            await delete_assistants_of(tx, user_id)
            await tx.execute("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            existed = await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
            await tx.execute(*_revocation_upsert(revocation))
        return [revocation] if existed else []

    async def revoke_api_keys(self, user_id: str, kind: str, at_ms: int) -> list[Revocation]:
        # Keys made before kinds were recorded (kind NULL) go too: they may be of it.
        where = "user_id = ? AND (kind = ? OR kind IS NULL)"
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT key_hash FROM api_keys WHERE {where}", (user_id, kind))
            revocations = [
                Revocation(user_id, row[0], f"{kind} key revoked", at_ms) for row in rows
            ]
            await tx.execute(f"DELETE FROM api_keys WHERE {where}", (user_id, kind))
            for revocation in revocations:
                await tx.execute(*_revocation_upsert(revocation))
        return revocations

    async def revoke_api_key(
        self, key_id: str, at_ms: int, user_id: str | None = None
    ) -> list[Revocation]:
        if len(key_id) != KEY_ID_CHARS or not all(c in "0123456789abcdef" for c in key_id):
            return []
        where = "key_hash LIKE ?" + ("" if user_id is None else " AND user_id = ?")
        args: tuple[str, ...] = (key_id + "%",) + (() if user_id is None else (user_id,))
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT key_hash, user_id FROM api_keys WHERE {where}", args)
            revocations = [Revocation(row[1], row[0], "key revoked", at_ms) for row in rows]
            await tx.execute(f"DELETE FROM api_keys WHERE {where}", args)
            for revocation in revocations:
                await tx.execute(*_revocation_upsert(revocation))
        return revocations

    async def revocations_since(self, at_ms: int) -> list[Revocation]:
        rows = await self.db.fetch(
            "SELECT user_id, key_hash, reason, at_ms FROM revocations WHERE at_ms >= ? "
            "ORDER BY at_ms",
            (at_ms,),
        )
        return [Revocation(row[0], row[1], row[2], int(row[3])) for row in rows]

    async def is_removed(self, user_id: str) -> bool:
        rows = await self.db.fetch(
            "SELECT 1 FROM revocations WHERE user_id = ? AND key_hash = ''", (user_id,)
        )
        return bool(rows)
