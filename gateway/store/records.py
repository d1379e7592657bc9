"""Rows of the store, as plain dataclasses (the service mutates and writes them back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class UserRecord:
    id: str
    name: str
    email: str | None
    role: str  # "admin" | "user" | "pending"
    password_hash: str | None
    profile_image_url: str
    created_at: int
    updated_at: int
    settings: dict[str, Any] = field(default_factory=dict)


# The owner of a shared chat's snapshot (Open WebUI's share: a copy made when
# the link is made or updated): "shared:<the sharer's user id>", so it is in no
# one's list and goes with the sharer's chats.
SHARED_BY = "shared:"


@dataclass(slots=True)
class ChatRecord:
    id: str
    user_id: str
    title: str
    current_id: str | None
    created_at: int
    updated_at: int
    share_id: str | None = None
    archived: bool = False
    pinned: bool = False
    folder_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Top-level keys of the chat object with no column: kept and returned as sent.
    extra: dict[str, Any] = field(default_factory=dict)
    last_read_at: int | None = None
    # A RAGFlow session: the assistant it belongs to.
    assistant_id: str | None = None


@dataclass(slots=True)
class AssistantRecord:
    """A RAGFlow chat assistant; `config` holds its settings as RAGFlow shows them
    (avatar, description, dataset_ids, llm, prompt, ...)."""

    id: str
    user_id: str
    name: str
    config: dict[str, Any]
    created_at_ms: int
    updated_at_ms: int


@dataclass(slots=True)
class MessageRecord:
    chat_id: str
    id: str
    parent_id: str | None
    role: str
    content: str
    done: bool | None = None
    # Every other message field as sent (timestamp, model, error, usage…); never childrenIds.
    fields: dict[str, Any] = field(default_factory=dict)
    draft: str | None = None
    position: int = 0


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as it is listed: never the key, which is stored only hashed.
    `id` is the first 12 hex digits of its hash (what `revoke` names)."""

    id: str
    user_id: str
    kind: str | None
    hint: str | None
    created_at: int
    last_used_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "kind": self.kind,
            "hint": self.hint,
            "created_at": self.created_at,
            "last_used_at": None if self.last_used_ms is None else self.last_used_ms // 1000,
        }


@dataclass(frozen=True, slots=True)
class Revocation:
    """Access taken back: a whole user (`key_hash` empty: removed) or one API key."""

    user_id: str
    key_hash: str  # "" for the whole user
    reason: str
    at_ms: int
