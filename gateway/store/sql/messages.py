"""Messages, one row each, and a reply's writes, on SQL.

    messages  (chat_id, id) → parent_id, role, content, done, fields (JSON: every
              other message field as sent, never childrenIds), draft, position
              (insertion order in its chat; the tree is rebuilt from parent_id)

A reply's row is written as a placeholder (`done` false), its `draft` is
checkpointed while it streams (content untouched), and `finish_reply` writes
it whole once, with its chat's time and title in the same transaction.  Rows
still `done` false at start-up are replies a crash left unfinished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway import offloop
from gateway.store.drivers import Row, Statement
from gateway.store.records import MessageRecord
from gateway.store.sql.common import Tables, dumps

MESSAGE_COLUMNS = "chat_id, id, parent_id, role, content, done, fields, draft, position"
# A chat of more rows is made records in a thread (each row's `fields` is read
# as JSON, about 9 µs a row): pure Python still, but the event loop gets its
# turns (every 5 ms) instead of waiting out a chat of thousands of messages.
OFF_LOOP_ROWS = 2_000


def _message(row: Row) -> MessageRecord:
    return MessageRecord(
        chat_id=row[0],
        id=row[1],
        parent_id=row[2],
        role=row[3],
        content=row[4],
        done=None if row[5] is None else bool(row[5]),
        fields=json.loads(row[6]),
        draft=row[7],
        position=int(row[8]),
    )


def messages_in(chat_id: str) -> Statement:
    """The read of a chat's messages, in the order they were written."""
    return f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? ORDER BY position", (chat_id,)


def messages_of(rows: list[Row]) -> list[MessageRecord]:
    return [_message(row) for row in rows]


async def records_of(rows: list[Row]) -> list[MessageRecord]:
    """`messages_of`, in a thread past `OFF_LOOP_ROWS`."""
    return await offloop.run_if(len(rows) > OFF_LOOP_ROWS, messages_of, rows)


def _message_fields(message: MessageRecord) -> tuple[Any, ...]:
    """parent_id, role, content, done, fields, draft: what a message write sets."""
    return (
        message.parent_id,
        message.role,
        message.content,
        message.done,
        dumps(message.fields),
        message.draft,
    )


def upserts(chat_id: str, messages: Sequence[MessageRecord]) -> list[Statement]:
    """One statement per message; a new row goes after the chat's last (its position
    is computed by the statement itself, so no read comes first)."""
    return [
        (
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
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


class SQLMessages(Tables):
    """The messages part of `ChatStore` on SQL."""

    async def get_messages(self, chat_id: str) -> list[MessageRecord]:
        return await records_of(await self.db.fetch(*messages_in(chat_id)))

    async def get_message(self, chat_id: str, message_id: str) -> MessageRecord | None:
        return await self._first(
            _message,
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND id = ?",
            chat_id,
            message_id,
        )

    async def upsert_messages(self, chat_id: str, messages: Sequence[MessageRecord]) -> None:
        if messages:
            await self.db.batch(upserts(chat_id, messages))

    async def update_message(self, message: MessageRecord) -> None:
        await self.db.execute(*_message_update(message))

    async def finish_unfinished(self, message: MessageRecord) -> None:
        """`update_message`, only while the stored row is still unfinished: a reply
        whose own end was written meanwhile keeps it."""
        sql, args = _message_update(message)
        await self.db.execute(sql + " AND done = ?", (*args, False))

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

    async def checkpoint_drafts(self, drafts: Sequence[tuple[str, str, str]]) -> None:
        """(chat id, message id, text so far) of replies in progress, in one call
        (`Driver.each`: on PostgreSQL no draft's row stays locked past its own
        statement); never over a finished row."""
        await self.db.each(
            [
                (
                    "UPDATE messages SET draft = ? WHERE chat_id = ? AND id = ? AND done = ?",
                    (draft, chat_id, message_id, False),
                )
                for chat_id, message_id, draft in drafts
            ]
        )

    async def unfinished_messages(self) -> list[MessageRecord]:
        rows = await self.db.fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE done = ? ORDER BY chat_id, position",
            (False,),
        )
        return [_message(row) for row in rows]
