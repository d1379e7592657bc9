"""What the store offers, one narrow protocol per aggregate.

    UserStore       users, API keys, revocations (removed users, revoked keys)
    ChatStore       chats, their messages (drafts, finishing replies), tags
    AssistantStore  RAGFlow chat assistants (their sessions are chats)
    Pingable        whether the database answers
    Store           all of them, plus migrations and closing: what `open_store` returns

A consumer takes the narrowest one it uses; the wiring opens one `Store` and
hands it to each (it satisfies them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.store.records import (
    ApiKeyRecord,
    AssistantRecord,
    ChatRecord,
    MessageRecord,
    Revocation,
    UserRecord,
)

__all__ = ["AssistantStore", "ChatStore", "Pingable", "Store", "UserStore"]


class UserStore(Protocol):
    """Users and their API keys, and access taken back (`application/access.py`).
    A duplicate id or e-mail raises `DuplicateKey`; e-mails are kept lower-case."""

    async def create_user(self, user: UserRecord) -> None: ...
    async def create_user_first_admin(
        self, user: UserRecord, *, only_first: bool = False
    ) -> UserRecord | None:
        """Create `user`, as an admin when no user exists yet: looked and inserted in
        one locked transaction, so of concurrent first sign-ups one alone is admin.
        With `only_first`, None (nothing made) when a user exists already."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...
    async def get_user_by_email(self, email: str) -> UserRecord | None: ...
    async def count_users(self) -> int: ...
    async def first_admin(self) -> UserRecord | None:
        """The admin whose account is oldest (created first; by id at a tie)."""
        ...

    async def list_users(self) -> list[UserRecord]: ...
    async def update_user(self, user: UserRecord) -> None: ...
    async def change_user(self, user: UserRecord, *columns: str) -> None: ...

    async def add_api_key(
        self,
        key_hash: str,
        user_id: str,
        created_at: int,
        kind: str = "openwebui",
        hint: str | None = None,
    ) -> None: ...
    async def user_for_api_key(self, key_hash: str) -> UserRecord | None: ...
    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        """One user's keys, or everyone's (None), newest first."""
        ...

    async def key_used(self, key_hash: str, at_ms: int) -> None: ...

    # Access taken back; each returns the revocations made.
    async def remove_user(self, user_id: str, at_ms: int) -> list[Revocation]:
        """The user, their chats, assistants and keys gone; their id refused for good."""
        ...

    async def revoke_api_keys(self, user_id: str, kind: str, at_ms: int) -> list[Revocation]: ...
    async def revoke_api_key(
        self, key_id: str, at_ms: int, user_id: str | None = None
    ) -> list[Revocation]:
        """The key whose id is `key_id` (of `user_id`, when given); [] when none is."""
        ...

    async def revocations_since(self, at_ms: int) -> list[Revocation]: ...
    async def is_removed(self, user_id: str) -> bool: ...


class ChatStore(Protocol):
    """Chats, one row per message, and tags.  A duplicate chat id or share id raises
    `DuplicateKey`."""

    async def insert_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None: ...
    async def put_chat(self, chat: ChatRecord, messages: Sequence[MessageRecord]) -> None: ...
    async def get_chat(self, chat_id: str) -> ChatRecord | None: ...
    async def get_chat_and_messages(
        self, chat_id: str, user_id: str
    ) -> tuple[ChatRecord, list[MessageRecord]] | None:
        """The chat, when it is `user_id`'s, and its messages in their order, in one
        read (one hop to SQLite's thread, one PostgreSQL connection): no other
        user's chat is read past its row.  None when there is no such chat."""
        ...

    async def get_chat_by_share_id(self, share_id: str) -> ChatRecord | None: ...
    async def change_chat(self, chat: ChatRecord, *columns: str) -> None: ...
    async def save_chat(
        self,
        chat: ChatRecord,
        messages: Sequence[MessageRecord],
        removed: Sequence[str] = (),
        columns: Sequence[str] = ("current_id", "updated_at"),
    ) -> None:
        """The chat's row (only `columns` of it), `messages` written and the messages
        `removed` deleted, at once."""
        ...

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
    ) -> list[ChatRecord]: ...
    async def count_chats(self, user_id: str, *, archived: bool | None = False) -> int: ...
    async def mark_all_read(self, user_id: str, at: int) -> int: ...
    async def delete_chat(self, chat_id: str) -> bool: ...
    async def delete_user_chats(self, user_id: str) -> int: ...
    async def set_archived_all(self, user_id: str, archived: bool) -> int: ...

    async def get_messages(self, chat_id: str) -> list[MessageRecord]: ...
    async def get_message(self, chat_id: str, message_id: str) -> MessageRecord | None: ...
    async def upsert_messages(self, chat_id: str, messages: Sequence[MessageRecord]) -> None: ...
    async def update_message(self, message: MessageRecord) -> None: ...
    async def finish_unfinished(self, message: MessageRecord) -> None: ...
    async def finish_reply(
        self,
        message: MessageRecord,
        updated_at: int,
        title: str | None = None,
        replaceable_titles: Sequence[str] = (),
    ) -> bool: ...
    async def checkpoint_drafts(self, drafts: Sequence[tuple[str, str, str]]) -> None: ...
    async def unfinished_messages(self) -> list[MessageRecord]: ...

    async def add_tag(self, user_id: str, chat_id: str, name: str) -> None: ...
    async def remove_tag(self, user_id: str, chat_id: str, name: str) -> None: ...
    async def clear_chat_tags(self, chat_id: str) -> None: ...
    async def chat_tags(self, chat_id: str) -> list[tuple[str, str]]: ...
    async def user_tags(self, user_id: str) -> list[tuple[str, str]]: ...


class AssistantStore(Protocol):
    """RAGFlow chat assistants.  A second assistant of the same name for one user
    raises `DuplicateKey`."""

    async def create_assistant(self, assistant: AssistantRecord) -> None: ...
    async def get_assistant(self, assistant_id: str) -> AssistantRecord | None: ...
    async def list_assistants(
        self,
        user_id: str,
        *,
        assistant_id: str | None = None,
        name: str | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[AssistantRecord]: ...
    async def update_assistant(self, assistant: AssistantRecord) -> None: ...
    async def delete_assistant(self, assistant_id: str) -> bool: ...


class Pingable(Protocol):
    async def ping(self) -> None:
        """Returns when the database answers a trivial query; raises when it does not."""
        ...


class Store(UserStore, ChatStore, AssistantStore, Pingable, Protocol):
    """The whole store, as `open_store` returns it (migrated)."""

    async def migrate(self) -> None: ...
    async def migrations(self) -> list[tuple[int, str]]:
        """The migrations applied: (version, file name), in order."""
        ...

    async def close(self) -> None: ...
