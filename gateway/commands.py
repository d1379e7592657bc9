"""Commands: what a decoded client frame asks the chat core to do.

Flavours turn wire frames into these; the chat service runs them.  They carry
no identity: the transport pairs each with the connection's `Principal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask a model for a reply.

    `messages` are OpenAI chat messages (`{"role", "content", ...}`); when a
    chat is named, the core may instead build them from the chat's tree.
    `params` are the sampling options passed through to the upstream
    (temperature, max_tokens, stop, ...), already validated as JSON values.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool = True
    include_usage: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    chat_id: str | None = None
    message_id: str | None = None
    parent_id: str | None = None
    session_id: str | None = None
    user_message: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a running reply: by message id, or every reply of a chat."""

    chat_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Typing:
    pass


Command = Ask | Cancel | Ping | Typing
