"""Chats, on SQL: a chat's row, lists and search, deletion.

    chats  id, user_id, title, current_id, created_at, updated_at (s), share_id
           (unique), archived, pinned, folder_id, meta (JSON), extra (JSON: the
           chat object's top-level keys with no column), last_read_at,
           assistant_id (a RAGFlow session: its assistant)

A chat's messages (`messages.py`) are written with its row in one batch;
deleting chats takes their messages and tag links with them, and the tags
left unused (`tags.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.store.drivers import Driver, Row, Statement
from gateway.store.records import SHARED_BY, ChatRecord, MessageRecord
from gateway.store.sql.common import Tables, dumps, duplicate_as, qualified
from gateway.store.sql.messages import messages_in, records_of, upserts
from gateway.store.sql.tags import drop_unused_tags, tag_id

CHAT_COLUMNS = (
    "id, user_id, title, current_id, created_at, updated_at, share_id, archived, pinned, "
    "folder_id, meta, extra, last_read_at, assistant_id"
)
_CHAT_MARKS = ", ".join("?" for _ in CHAT_COLUMNS.split(","))
_OWNED = "SELECT id FROM chats WHERE user_id = ?"


def like_escaped(text: str) -> str:
    """`text` matched literally by `LIKE … ESCAPE '\\'`: its `%` and `_` (and the escape
    character itself) are not wildcards.  Both SQLite and PostgreSQL honour the clause."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
        dumps(chat.meta),
        dumps(chat.extra),
        chat.last_read_at,
        chat.assistant_id,
    )


# What a write of a chat's messages changes in its row (`save_chat`; an edit of
# the chat object names its title and extra too); the flags (pin, archive,
# share, folder, last read, params) are `change_chat`'s.
TREE_COLUMNS = ("current_id", "updated_at")
_JSON_COLUMNS = frozenset({"meta", "extra"})


def _columns_update(chat: ChatRecord, columns: Sequence[str]) -> Statement:
    known = [column.strip() for column in CHAT_COLUMNS.split(",")][1:]
    if not columns or any(column not in known for column in columns):
        raise ValueError(f"not columns of a chat's row: {columns!r}")
    values = [getattr(chat, column) for column in columns]
    values = [dumps(v) if c in _JSON_COLUMNS else v for c, v in zip(columns, values, strict=True)]
    assignments = ", ".join(f"{column} = ?" for column in columns)
    return (f"UPDATE chats SET {assignments} WHERE id = ?", (*values, chat.id))


def _chat_filter(
    user_id: str,
    *,
    archived: bool | None,
    pinned: bool | None = None,
    folder_id: str | None = None,
    tag: str | None = None,
    text: str | None = None,
    assistant_id: str | None = None,
    shared: bool | None = None,
) -> tuple[list[str], list[Any]]:
    """The WHERE conditions of `list_chats` (on `chats c`) and their arguments."""
    where = ["c.user_id = ?"]
    args: list[Any] = [user_id]
    if shared is not None:
        where.append("c.share_id IS NOT NULL" if shared else "c.share_id IS NULL")
    equal = (
        ("c.assistant_id", assistant_id),
        ("c.archived", archived),
        ("c.pinned", pinned),
        ("c.folder_id", folder_id),
    )
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if tag is not None:
        where.append("EXISTS (SELECT 1 FROM chat_tags t WHERE t.chat_id = c.id AND t.tag_id = ?)")
        args.append(tag_id(tag))
    if text:
        pattern = f"%{like_escaped(text.lower())}%"
        where.append(
            "(LOWER(c.title) LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
            "WHERE m.chat_id = c.id AND LOWER(m.content) LIKE ? ESCAPE '\\'))"
        )
        args += [pattern, pattern]
    return where, args


def _page(dialect: str, skip: int, limit: int | None) -> tuple[str, list[Any]]:
    """The LIMIT/OFFSET clause for a page (SQLite has no OFFSET without a LIMIT)."""
    if limit is not None:
        return " LIMIT ? OFFSET ?", [limit, skip]
    if skip:
        return (" LIMIT -1 OFFSET ?" if dialect == "sqlite" else " OFFSET ?"), [skip]
    return "", []


# -- shared with a user's removal ------------------------------------------------------
async def delete_chats_of(db: Driver, user_id: str) -> int:
    """Every chat of a user with its messages and tag links, and the snapshots of
    those the user shared, inside the caller's transaction; the number of chats."""
    for owner in (SHARED_BY + user_id, user_id):
        await db.execute(f"DELETE FROM messages WHERE chat_id IN ({_OWNED})", (owner,))
        await db.execute(f"DELETE FROM chat_tags WHERE chat_id IN ({_OWNED})", (owner,))
        deleted = await db.execute("DELETE FROM chats WHERE user_id = ?", (owner,))
    return deleted


class SQLChats(Tables):
    """The chats part of `ChatStore` on SQL."""

    async def insert_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None:
        insert = (
            f"INSERT INTO chats ({CHAT_COLUMNS}) VALUES ({_CHAT_MARKS})",
            _chat_values(chat),
        )
        with duplicate_as(f"chat {chat.id!r} exists already"):
            await self.db.batch([insert, *upserts(chat.id, messages)])

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        return await self._first(_chat, f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?", chat_id)

    async def get_chat_and_messages(
        self, chat_id: str, user_id: str
    ) -> tuple[ChatRecord, list[MessageRecord]] | None:
        def then(rows: list[Row]) -> Statement | None:
            return messages_in(chat_id) if rows else None

        rows, messages = await self.db.fetch_then(
            (f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = ? AND user_id = ?", (chat_id, user_id)),
            then,
        )
        return (_chat(rows[0]), await records_of(messages)) if rows else None

    async def get_chat_by_share_id(self, share_id: str) -> ChatRecord | None:
        return await self._first(
            _chat, f"SELECT {CHAT_COLUMNS} FROM chats WHERE share_id = ?", share_id
        )

    async def mark_all_read(self, user_id: str, at: int) -> int:
        return await self.db.execute(
            "UPDATE chats SET last_read_at = ? WHERE user_id = ?", (at, user_id)
        )

    async def change_chat(self, chat: ChatRecord, *columns: str) -> None:
        """Only the named columns of the chat's row written, from `chat`: a flag set
        (a pin, the last read time, a title) does not write back the rest of a row
        read earlier, over another writer's change."""
        await self.db.execute(*_columns_update(chat, columns))

    async def save_chat(
        self,
        chat: ChatRecord,
        messages: Sequence[MessageRecord],
        removed: Sequence[str] = (),
        columns: Sequence[str] = TREE_COLUMNS,
    ) -> None:
        deletes: list[Statement] = [
            ("DELETE FROM messages WHERE chat_id = ? AND id = ?", (chat.id, message_id))
            for message_id in removed
        ]
        row = _columns_update(chat, columns)
        await self.db.batch([row, *deletes, *upserts(chat.id, messages)])

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
        shared: bool | None = None,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[ChatRecord]:
        where, args = _chat_filter(
            user_id,
            archived=archived,
            pinned=pinned,
            folder_id=folder_id,
            tag=tag,
            text=text,
            assistant_id=assistant_id,
            shared=shared,
        )
        page, page_args = _page(self.db.dialect, skip, limit)
        sql = (
            f"SELECT {qualified(CHAT_COLUMNS, 'c')} FROM chats c "
            f"WHERE {' AND '.join(where)} ORDER BY c.updated_at DESC, c.id{page}"
        )
        return [_chat(row) for row in await self.db.fetch(sql, [*args, *page_args])]

    async def count_chats(self, user_id: str, *, archived: bool | None = False) -> int:
        """How many of the user's chats `list_chats` would list, counted by the database."""
        where, args = _chat_filter(user_id, archived=archived)
        rows = await self.db.fetch(
            f"SELECT COUNT(*) FROM chats c WHERE {' AND '.join(where)}", args
        )
        return int(rows[0][0])

    async def delete_chat(self, chat_id: str) -> bool:
        """The chat, and the snapshot of it a share link shows, in one transaction:
        no link outlives its chat, whichever route deletes it."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch("SELECT share_id FROM chats WHERE id = ?", (chat_id,))
            shared = [row[0] for row in rows if row[0] is not None]
            for gone in (chat_id, *shared):
                await tx.execute("DELETE FROM messages WHERE chat_id = ?", (gone,))
                await tx.execute("DELETE FROM chat_tags WHERE chat_id = ?", (gone,))
                deleted = await tx.execute("DELETE FROM chats WHERE id = ?", (gone,))
                if gone == chat_id:
                    found = int(deleted) > 0
            await drop_unused_tags(tx)
        return found

    async def put_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None:
        """The chat as given, in place of what is stored under its id (its messages
        too), in one transaction; two at once leave one of the two whole."""
        columns = [column.strip() for column in CHAT_COLUMNS.split(",")]
        changed = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
        put = (
            f"INSERT INTO chats ({CHAT_COLUMNS}) VALUES ({_CHAT_MARKS}) "
            f"ON CONFLICT (id) DO UPDATE SET {changed}",
            _chat_values(chat),
        )
        clear = ("DELETE FROM messages WHERE chat_id = ?", (chat.id,))
        await self.db.batch([put, clear, *upserts(chat.id, messages)])

    async def delete_user_chats(self, user_id: str) -> int:
        async with self.db.transaction() as tx:
            deleted = await delete_chats_of(tx, user_id)
            await drop_unused_tags(tx)
        return int(deleted)

    async def set_archived_all(self, user_id: str, archived: bool) -> int:
        return await self.db.execute(
            "UPDATE chats SET archived = ? WHERE user_id = ? AND archived <> ?",
            (archived, user_id, archived),
        )
