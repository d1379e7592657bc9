"""The store on SQL: every query written once, run on SQLite or PostgreSQL
through `gateway/store/drivers.py`.

One module per noun, each a class holding the shared driver::

    users.py       SQLUsers       users, API keys, revocations      (UserStore)
    chats.py       SQLChats       chat rows, lists, search, deletion ┐
    messages.py    SQLMessages    messages, drafts, finished replies ├ (ChatStore)
    tags.py        SQLTags        tags of chats                      ┘
    assistants.py  SQLAssistants  RAGFlow chat assistants           (AssistantStore)
    migrations.py                 the numbered schema files, applied once

`SQLStore` is all of them in one object over one driver: the `Store` that
`open_store` returns.
"""

from __future__ import annotations

from gateway.edge import metrics
from gateway.store.sql import migrations as _migrations
from gateway.store.sql.assistants import SQLAssistants
from gateway.store.sql.chats import SQLChats, like_escaped
from gateway.store.sql.messages import SQLMessages
from gateway.store.sql.tags import SQLTags, tag_id
from gateway.store.sql.users import SQLUsers

__all__ = [
    "SQLAssistants",
    "SQLChats",
    "SQLMessages",
    "SQLStore",
    "SQLTags",
    "SQLUsers",
    "like_escaped",
    "tag_id",
]


@metrics.timed_methods
class SQLStore(SQLUsers, SQLChats, SQLMessages, SQLTags, SQLAssistants):
    """The whole store over one driver (the aggregates' methods do not overlap); every
    call timed (`gateway_store_seconds{op}`)."""

    async def migrate(self) -> None:
        await _migrations.migrate(self.db)

    async def migrations(self) -> list[tuple[int, str]]:
        return await _migrations.applied(self.db)

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetch("SELECT 1")
