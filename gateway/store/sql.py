"""The store on SQL: every query written once, run on SQLite or PostgreSQL.

Migrations are the numbered files in `schema/` (`0001_initial.sql`, …),
each applied once, in order, in its own transaction, and recorded in
`schema_migrations`.  On PostgreSQL a transaction-level advisory lock makes
replicas that start together take turns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

from gateway import jsonwire
from gateway.store.drivers import Driver, Row, Statement
from gateway.store.errors import Conflict
from gateway.store.records import (
    AssistantRecord,
    ChatRecord,
    MessageRecord,
    Revocation,
    UserRecord,
)

T = TypeVar("T")

MIGRATION_LOCK_ID = 0x6761_7465  # "gate"

_USER_COLUMNS = (
    "id, name, email, role, password_hash, profile_image_url, created_at, updated_at, settings"
)
_CHAT_COLUMNS = (
    "id, user_id, title, current_id, created_at, updated_at, share_id, archived, pinned, "
    "folder_id, meta, extra, last_read_at, assistant_id"
)
_CHAT_MARKS = ", ".join("?" for _ in _CHAT_COLUMNS.split(","))
_ASSISTANT_COLUMNS = "id, user_id, name, config, created_at_ms, updated_at_ms"
_MESSAGE_COLUMNS = "chat_id, id, parent_id, role, content, done, fields, draft, position"


def _dumps(value: Any) -> str:
    return jsonwire.dumps(value)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _user(row: Row) -> UserRecord:
    return UserRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7]), json.loads(row[8])
    )


def _chat(row: Row) -> ChatRecord:
    return ChatRecord(
        id=row[0],
        user_id=row[1],
        title=row[2],
        current_id=row[3],
        created_at=int(row[4]),
        updated_at=int(row[5]),
        share_id=row[6],
        archived=bool(row[7]),
        pinned=bool(row[8]),
        folder_id=row[9],
        meta=json.loads(row[10]),
        extra=json.loads(row[11]),
        last_read_at=None if row[12] is None else int(row[12]),
        assistant_id=row[13],
    )


def _assistant(row: Row) -> AssistantRecord:
    return AssistantRecord(row[0], row[1], row[2], json.loads(row[3]), int(row[4]), int(row[5]))


def _message(row: Row) -> MessageRecord:
    return MessageRecord(
        chat_id=row[0],
        id=row[1],
        parent_id=row[2],
        role=row[3],
        content=row[4],
        done=_bool(row[5]),
        fields=json.loads(row[6]),
        draft=row[7],
        position=int(row[8]),
    )


def _chat_values(chat: ChatRecord) -> tuple[Any, ...]:
    return (
        chat.id,
        chat.user_id,
        chat.title,
        chat.current_id,
        chat.created_at,
        chat.updated_at,
        chat.share_id,
        chat.archived,
        chat.pinned,
        chat.folder_id,
        _dumps(chat.meta),
        _dumps(chat.extra),
        chat.last_read_at,
        chat.assistant_id,
    )


def _assistant_values(assistant: AssistantRecord) -> tuple[Any, ...]:
    return (
        assistant.id,
        assistant.user_id,
        assistant.name,
        _dumps(assistant.config),
        assistant.created_at_ms,
        assistant.updated_at_ms,
    )


def _revocation_upsert(revocation: Revocation) -> Statement:
    # A second removal or revocation only moves the time on.
    return (
        "INSERT INTO revocations (user_id, key_hash, reason, at_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, key_hash) DO UPDATE SET reason = excluded.reason, "
        "at_ms = excluded.at_ms",
        (revocation.user_id, revocation.key_hash, revocation.reason, revocation.at_ms),
    )


def like_escaped(text: str) -> str:
    """`text` matched literally by `LIKE … ESCAPE '\\'`: its `%` and `_` (and the escape
    character itself) are not wildcards.  Both SQLite and PostgreSQL honour the clause."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def tag_id(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


@contextmanager
def _conflict_as(message: str) -> Iterator[None]:
    """A unique-constraint violation (sqlite3 or asyncpg) becomes `Conflict(message)`."""
    try:
        yield
    except Exception as exc:
        text = f"{type(exc).__name__} {exc}".lower()
        if "unique" in text or "integrity" in text:
            raise Conflict(message) from None
        raise


def _user_exists(user: UserRecord) -> str:
    email = user.email.lower() if user.email else None
    return f"user {user.id!r} or email {email!r} exists already"


def _user_insert(user: UserRecord) -> Statement:
    return (
        f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user.id,
            user.name,
            user.email.lower() if user.email else None,
            user.role,
            user.password_hash,
            user.profile_image_url,
            user.created_at,
            user.updated_at,
            _dumps(user.settings),
        ),
    )


def _chat_update(chat: ChatRecord) -> Statement:
    return (
        "UPDATE chats SET user_id = ?, title = ?, current_id = ?, created_at = ?, updated_at = ?, "
        "share_id = ?, archived = ?, pinned = ?, folder_id = ?, meta = ?, extra = ?, "
        "last_read_at = ?, assistant_id = ? WHERE id = ?",
        (*_chat_values(chat)[1:], chat.id),
    )


def _upserts(chat_id: str, messages: Sequence[MessageRecord]) -> list[Statement]:
    """One statement per message; a new row goes after the chat's last (its position
    is computed by the statement itself, so no read comes first)."""
    return [
        (
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE chat_id = ?)) "
            "ON CONFLICT (chat_id, id) DO UPDATE SET parent_id = excluded.parent_id, "
            "role = excluded.role, content = excluded.content, done = excluded.done, "
            "fields = excluded.fields, draft = excluded.draft",
            (chat_id, message.id, *_message_fields(message), chat_id),
        )
        for message in messages
    ]


def _message_update(message: MessageRecord) -> Statement:
    return (
        "UPDATE messages SET parent_id = ?, role = ?, content = ?, done = ?, fields = ?, draft = ? "
        "WHERE chat_id = ? AND id = ?",
        (*_message_fields(message), message.chat_id, message.id),
    )


def _message_fields(message: MessageRecord) -> tuple[Any, ...]:
    """parent_id, role, content, done, fields, draft: what a message write sets."""
    return (
        message.parent_id,
        message.role,
        message.content,
        message.done,
        _dumps(message.fields),
        message.draft,
    )


class SQLStore:
    def __init__(self, driver: Driver) -> None:
        self.db = driver

    # -- lifecycle ---------------------------------------------------------
    async def migrate(self) -> None:
        files = sorted(
            (
                entry
                for entry in resources.files("gateway.store.schema").iterdir()
                if entry.name.endswith(".sql")
            ),
            key=lambda entry: entry.name,
        )
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            applied = {
                int(row[0]) for row in await tx.fetch("SELECT version FROM schema_migrations")
            }
            for entry in files:
                version = int(entry.name.split("_", 1)[0])
                if version in applied:
                    continue
                await tx.executescript(entry.read_text(encoding="utf-8"))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, entry.name, int(time.time())),
                )

    async def migrations(self) -> list[tuple[int, str]]:
        rows = await self.db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        return [(int(row[0]), str(row[1])) for row in rows]

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetch("SELECT 1")

    async def _first(self, parse: Callable[[Row], T], sql: str, *args: Any) -> T | None:
        rows = await self.db.fetch(sql, args)
        return parse(rows[0]) if rows else None

    # -- users -------------------------------------------------------------
    async def create_user(self, user: UserRecord) -> None:
        with _conflict_as(_user_exists(user)):
            await self.db.execute(*_user_insert(user))

    async def create_user_first_admin(
        self, user: UserRecord, *, only_first: bool = False
    ) -> UserRecord | None:
        with _conflict_as(_user_exists(user)):
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
        return await self._first(_user, f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        return await self._first(
            _user, f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", email.lower()
        )

    async def count_users(self) -> int:
        rows = await self.db.fetch("SELECT COUNT(*) FROM users")
        return int(rows[0][0])

    async def list_users(self) -> list[UserRecord]:
        rows = await self.db.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id")
        return [_user(row) for row in rows]

    async def update_user(self, user: UserRecord) -> None:
        await self.db.execute(
            "UPDATE users SET name = ?, email = ?, role = ?, password_hash = ?, profile_image_url = ?, "
            "updated_at = ?, settings = ? WHERE id = ?",
            (
                user.name,
                user.email.lower() if user.email else None,
                user.role,
                user.password_hash,
                user.profile_image_url,
                user.updated_at,
                _dumps(user.settings),
                user.id,
            ),
        )

    # -- api keys ----------------------------------------------------------
    async def add_api_key(
        self, key_hash: str, user_id: str, created_at: int, kind: str = "openwebui"
    ) -> None:
        await self.db.execute(
            "INSERT INTO api_keys (key_hash, user_id, created_at, kind) VALUES (?, ?, ?, ?)",
            (key_hash, user_id, created_at, kind),
        )

    async def user_for_api_key(self, key_hash: str) -> UserRecord | None:
        columns = ", ".join(f"u.{c.strip()}" for c in _USER_COLUMNS.split(","))
        return await self._first(
            _user,
            f"SELECT {columns} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?",
            key_hash,
        )

    # -- access taken back ---------------------------------------------------
    async def remove_user(self, user_id: str, at_ms: int) -> list[Revocation]:
        revocation = Revocation(user_id, "", "removed", at_ms)
        async with self.db.transaction() as tx:
            owned = "SELECT id FROM chats WHERE user_id = ?"
            await tx.execute(f"DELETE FROM messages WHERE chat_id IN ({owned})", (user_id,))
            await tx.execute(f"DELETE FROM chat_tags WHERE chat_id IN ({owned})", (user_id,))
            await tx.execute("DELETE FROM chats WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM tags WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM assistants WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            existed = await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
            await tx.execute(*_revocation_upsert(revocation))
        return [revocation] if existed else []

    async def revoke_api_keys(self, user_id: str, kind: str, at_ms: int) -> list[Revocation]:
        # Keys made before kinds were recorded (kind NULL) go too: they may be of it.
        where = "user_id = ? AND (kind = ? OR kind IS NULL)"
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT key_hash FROM api_keys WHERE {where}", (user_id, kind))
            revocations = [Revocation(user_id, row[0], f"{kind} key revoked", at_ms) for row in rows]
            await tx.execute(f"DELETE FROM api_keys WHERE {where}", (user_id, kind))
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

    # -- chats -------------------------------------------------------------
    async def insert_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None:
        insert = (
            f"INSERT INTO chats ({_CHAT_COLUMNS}) VALUES ({_CHAT_MARKS})",
            _chat_values(chat),
        )
        with _conflict_as(f"chat {chat.id!r} exists already"):
            await self.db.batch([insert, *_upserts(chat.id, messages)])

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        return await self._first(_chat, f"SELECT {_CHAT_COLUMNS} FROM chats WHERE id = ?", chat_id)

    async def get_chat_by_share_id(self, share_id: str) -> ChatRecord | None:
        return await self._first(
            _chat, f"SELECT {_CHAT_COLUMNS} FROM chats WHERE share_id = ?", share_id
        )

    async def update_chat(self, chat: ChatRecord) -> None:
        await self.db.execute(*_chat_update(chat))

    async def save_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None:
        await self.db.batch([_chat_update(chat), *_upserts(chat.id, messages)])

    async def list_chats(
        self,
        user_id: str,
        *,
        archived: bool | None = False,
        pinned: bool | None = None,
        folder_id: str | None = None,
        tag: str | None = None,
        text: str | None = None,
        assistant_id: str | None = None,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[ChatRecord]:
        where = ["c.user_id = ?"]
        args: list[Any] = [user_id]
        if assistant_id is not None:
            where.append("c.assistant_id = ?")
            args.append(assistant_id)
        if archived is not None:
            where.append("c.archived = ?")
            args.append(archived)
        if pinned is not None:
            where.append("c.pinned = ?")
            args.append(pinned)
        if folder_id is not None:
            where.append("c.folder_id = ?")
            args.append(folder_id)
        if tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM chat_tags t WHERE t.chat_id = c.id AND t.tag_id = ?)"
            )
            args.append(tag_id(tag))
        if text:
            pattern = f"%{like_escaped(text.lower())}%"
            where.append(
                "(LOWER(c.title) LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.chat_id = c.id AND LOWER(m.content) LIKE ? ESCAPE '\\'))"
            )
            args += [pattern, pattern]
        sql = (
            f"SELECT {', '.join('c.' + c.strip() for c in _CHAT_COLUMNS.split(','))} FROM chats c "
            f"WHERE {' AND '.join(where)} ORDER BY c.updated_at DESC, c.id"
        )
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, skip]
        elif skip:
            sql += " LIMIT -1 OFFSET ?" if self.db.dialect == "sqlite" else " OFFSET ?"
            args.append(skip)
        return [_chat(row) for row in await self.db.fetch(sql, args)]

    async def delete_chat(self, chat_id: str) -> bool:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
            await tx.execute("DELETE FROM chat_tags WHERE chat_id = ?", (chat_id,))
            deleted = await tx.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
            await self._drop_unused_tags(tx)
        return int(deleted) > 0

    async def delete_user_chats(self, user_id: str) -> int:
        async with self.db.transaction() as tx:
            owned = "SELECT id FROM chats WHERE user_id = ?"
            await tx.execute(f"DELETE FROM messages WHERE chat_id IN ({owned})", (user_id,))
            await tx.execute(f"DELETE FROM chat_tags WHERE chat_id IN ({owned})", (user_id,))
            deleted = await tx.execute("DELETE FROM chats WHERE user_id = ?", (user_id,))
            await self._drop_unused_tags(tx)
        return int(deleted)

    async def set_archived_all(self, user_id: str, archived: bool) -> int:
        return await self.db.execute(
            "UPDATE chats SET archived = ? WHERE user_id = ? AND archived <> ?",
            (archived, user_id, archived),
        )

    # -- assistants ---------------------------------------------------------
    async def create_assistant(self, assistant: AssistantRecord) -> None:
        with _conflict_as(f"an assistant named {assistant.name!r} exists already"):
            await self.db.execute(
                f"INSERT INTO assistants ({_ASSISTANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                _assistant_values(assistant),
            )

    async def get_assistant(self, assistant_id: str) -> AssistantRecord | None:
        return await self._first(
            _assistant,
            f"SELECT {_ASSISTANT_COLUMNS} FROM assistants WHERE id = ?",
            assistant_id,
        )

    async def list_assistants(
        self,
        user_id: str,
        *,
        assistant_id: str | None = None,
        name: str | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[AssistantRecord]:
        where, args = ["user_id = ?"], [user_id]
        if assistant_id is not None:
            where.append("id = ?")
            args.append(assistant_id)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT {_ASSISTANT_COLUMNS} FROM assistants WHERE {' AND '.join(where)} "
            f"ORDER BY created_at_ms {order}, id {order}"
        )
        params: list[Any] = list(args)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, skip]
        return [_assistant(row) for row in await self.db.fetch(sql, params)]

    async def update_assistant(self, assistant: AssistantRecord) -> None:
        with _conflict_as(f"an assistant named {assistant.name!r} exists already"):
            await self.db.execute(
                "UPDATE assistants SET name = ?, config = ?, updated_at_ms = ? WHERE id = ?",
                (assistant.name, _dumps(assistant.config), assistant.updated_at_ms, assistant.id),
            )

    async def delete_assistant(self, assistant_id: str) -> bool:
        # Its sessions stay: they are the owner's chats, still listed in Open WebUI.
        return await self.db.execute("DELETE FROM assistants WHERE id = ?", (assistant_id,)) > 0

    # -- messages ----------------------------------------------------------
    async def get_messages(self, chat_id: str) -> list[MessageRecord]:
        rows = await self.db.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? ORDER BY position",
            (chat_id,),
        )
        return [_message(row) for row in rows]

    async def get_message(self, chat_id: str, message_id: str) -> MessageRecord | None:
        return await self._first(
            _message,
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND id = ?",
            chat_id,
            message_id,
        )

    async def upsert_messages(self, chat_id: str, messages: Sequence[MessageRecord]) -> None:
        if messages:
            await self.db.batch(_upserts(chat_id, messages))

    async def update_message(self, message: MessageRecord) -> None:
        await self.db.execute(*_message_update(message))

    async def finish_reply(
        self,
        message: MessageRecord,
        updated_at: int,
        title: str | None = None,
        replaceable_titles: Sequence[str] = (),
    ) -> bool:
        """A reply's last write, one transaction: its row, the chat's `updated_at`, and
        `title` if the chat's title is still one of `replaceable_titles` (a client may
        have renamed the chat meanwhile).  True when the title was set."""
        statements = [
            _message_update(message),
            ("UPDATE chats SET updated_at = ? WHERE id = ?", (updated_at, message.chat_id)),
        ]
        if title is not None and replaceable_titles:
            marks = ", ".join("?" for _ in replaceable_titles)
            statements.append(
                (
                    f"UPDATE chats SET title = ? WHERE id = ? AND title IN ({marks})",
                    (title, message.chat_id, *replaceable_titles),
                )
            )
        counts = await self.db.batch(statements)
        return len(counts) == 3 and counts[2] > 0

    async def checkpoint_draft(self, chat_id: str, message_id: str, draft: str) -> None:
        await self.db.execute(
            "UPDATE messages SET draft = ? WHERE chat_id = ? AND id = ?",
            (draft, chat_id, message_id),
        )

    async def unfinished_messages(self) -> list[MessageRecord]:
        rows = await self.db.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE done = ? ORDER BY chat_id, position",
            (False,),
        )
        return [_message(row) for row in rows]

    # -- tags --------------------------------------------------------------
    async def add_tag(self, user_id: str, chat_id: str, name: str) -> None:
        tid = tag_id(name)
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO tags (user_id, id, name) VALUES (?, ?, ?) ON CONFLICT (user_id, id) DO NOTHING",
                (user_id, tid, name.strip()),
            )
            rows = await tx.fetch(
                "SELECT COALESCE(MAX(position), -1) FROM chat_tags WHERE chat_id = ?", (chat_id,)
            )
            await tx.execute(
                "INSERT INTO chat_tags (chat_id, user_id, tag_id, position) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chat_id, tag_id) DO NOTHING",
                (chat_id, user_id, tid, int(rows[0][0]) + 1),
            )

    async def remove_tag(self, user_id: str, chat_id: str, name: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM chat_tags WHERE chat_id = ? AND tag_id = ?", (chat_id, tag_id(name))
            )
            await self._drop_unused_tags(tx)

    async def clear_chat_tags(self, chat_id: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM chat_tags WHERE chat_id = ?", (chat_id,))
            await self._drop_unused_tags(tx)

    async def chat_tags(self, chat_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT t.id, t.name FROM chat_tags ct JOIN tags t ON t.user_id = ct.user_id AND t.id = ct.tag_id "
            "WHERE ct.chat_id = ? ORDER BY ct.position",
            (chat_id,),
        )
        return [(str(row[0]), str(row[1])) for row in rows]

    async def user_tags(self, user_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT id, name FROM tags WHERE user_id = ? ORDER BY name", (user_id,)
        )
        return [(str(row[0]), str(row[1])) for row in rows]

    async def _drop_unused_tags(self, db: Driver) -> None:
        await db.execute(
            "DELETE FROM tags WHERE NOT EXISTS (SELECT 1 FROM chat_tags ct "
            "WHERE ct.user_id = tags.user_id AND ct.tag_id = tags.id)"
        )
