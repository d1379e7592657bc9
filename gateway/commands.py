"""Commands: what a decoded client frame asks the chat core to do.

Flavours turn wire frames into these; the chat service runs them.  They carry
no identity: the transport pairs each with the connection's `Principal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """One assistant message to answer into, with the model that answers it."""

    message_id: str
    model: str
    # Open WebUI's position of the model in a multi-model turn (`modelIdx`).
    model_idx: int | None = None


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
    # Every reply of a turn (several models answer one question); empty means
    # one reply, `message_id` by `model`.
    targets: tuple[ReplyTarget, ...] = ()
    # An unsaved chat: `chat_id` names it on the wire, nothing is stored.
    temporary: bool = False
    # Rooms the reply's events also go to, besides the owner's and the chat's:
    # the asking connection's own (`conn:<id>`) or a Nadoo session's.
    rooms: tuple[str, ...] = ()

    def reply_targets(self) -> tuple[ReplyTarget, ...]:
        if self.targets:
            return self.targets
        if self.message_id is None:
            raise RuntimeError("Ask.reply_targets() needs message_id or targets")
        return (ReplyTarget(self.message_id, self.model),)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a running reply: by message id, or every reply of a chat."""

    chat_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Say:
    """A user message to a chat (a new chat when `chat_id` is None), to be answered.

    `model` is what the client named (a model id, or an application/assistant
    the endpoint resolves); None means the gateway's default model.
    """

    text: str
    chat_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Typing:
    pass


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A client event relayed to the other members of a room (Nadoo workspaces)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


Command = Ask | Cancel | Say | Ping | Typing | Broadcast
