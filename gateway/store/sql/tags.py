"""Tags of chats, on SQL.

    tags       (user_id, id) → name          `id` is the name folded (`tag_id`)
    chat_tags  (chat_id, tag_id) → user_id, position (the order they were added)

A tag lives as long as a chat of its user carries it: whatever unlinks a tag
(untagging, clearing a chat's tags, deleting chats) drops the tags left unused
in the same transaction.
"""

from __future__ import annotations

from gateway.store.drivers import Driver
from gateway.store.sql.common import Tables


def tag_id(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


async def drop_unused_tags(db: Driver) -> None:
    """Tags no chat carries any more (inside the caller's transaction)."""
    await db.execute(
        "DELETE FROM tags WHERE NOT EXISTS (SELECT 1 FROM chat_tags ct "
        "WHERE ct.user_id = tags.user_id AND ct.tag_id = tags.id)"
    )


async def delete_tags_of(db: Driver, user_id: str) -> None:
    """Every tag of a user (inside the caller's transaction, when it has one)."""
    await db.execute("DELETE FROM tags WHERE user_id = ?", (user_id,))


class SQLTags(Tables):
    """The tags part of `ChatStore` on SQL."""

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
            await drop_unused_tags(tx)

    async def clear_chat_tags(self, chat_id: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM chat_tags WHERE chat_id = ?", (chat_id,))
            await drop_unused_tags(tx)

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
