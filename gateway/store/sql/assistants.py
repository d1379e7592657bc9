"""RAGFlow chat assistants, on SQL.

    assistants  id, user_id, name (unique per user), config (JSON: avatar,
                description, dataset_ids, llm, prompt, … as RAGFlow shows them),
                created_at_ms, updated_at_ms

An assistant's sessions are chats (`chats.assistant_id`), stored and deleted
with the chats: deleting an assistant leaves them in its owner's chat list.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.store.drivers import Driver, Row
from gateway.store.records import AssistantRecord
from gateway.store.sql.common import Tables, dumps, duplicate_as

ASSISTANT_COLUMNS = "id, user_id, name, config, created_at_ms, updated_at_ms"


def _assistant(row: Row) -> AssistantRecord:
    return AssistantRecord(row[0], row[1], row[2], json.loads(row[3]), int(row[4]), int(row[5]))


def _assistant_values(assistant: AssistantRecord) -> tuple[Any, ...]:
    return (
        assistant.id,
        assistant.user_id,
        assistant.name,
        dumps(assistant.config),
        assistant.created_at_ms,
        assistant.updated_at_ms,
    )


def _name_taken(assistant: AssistantRecord) -> str:
    return f"an assistant named {assistant.name!r} exists already"


async def delete_assistants_of(db: Driver, user_id: str) -> None:
    """Every assistant of a user (inside the caller's transaction, when it has one)."""
    await db.execute("DELETE FROM assistants WHERE user_id = ?", (user_id,))


class SQLAssistants(Tables):
    """`AssistantStore` on SQL."""

    async def create_assistant(self, assistant: AssistantRecord) -> None:
        with duplicate_as(_name_taken(assistant)):
            await self.db.execute(
                f"INSERT INTO assistants ({ASSISTANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                _assistant_values(assistant),
            )

    async def get_assistant(self, assistant_id: str) -> AssistantRecord | None:
        return await self._first(
            _assistant,
            f"SELECT {ASSISTANT_COLUMNS} FROM assistants WHERE id = ?",
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
        # `skip` applies only with a `limit`.
        where, args = ["user_id = ?"], [user_id]
        if assistant_id is not None:
            where.append("id = ?")
            args.append(assistant_id)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT {ASSISTANT_COLUMNS} FROM assistants WHERE {' AND '.join(where)} "
            f"ORDER BY created_at_ms {order}, id {order}"
        )
        params: list[Any] = list(args)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, skip]
        return [_assistant(row) for row in await self.db.fetch(sql, params)]

    async def update_assistant(self, assistant: AssistantRecord) -> None:
        with duplicate_as(_name_taken(assistant)):
            await self.db.execute(
                "UPDATE assistants SET name = ?, config = ?, updated_at_ms = ? WHERE id = ?",
                (assistant.name, dumps(assistant.config), assistant.updated_at_ms, assistant.id),
            )

    async def delete_assistant(self, assistant_id: str) -> bool:
        # Its sessions stay: they are the owner's chats, still listed in Open WebUI.
        return await self.db.execute("DELETE FROM assistants WHERE id = ?", (assistant_id,)) > 0
