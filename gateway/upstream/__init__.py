"""Model servers behind the gateway: what a reply is read from.

An `Upstream` lists its models and opens a `ReplyStream` for one request.
Opening waits for the upstream's response headers, so "server down" and
"bad request" surface before the client's response is prepared (a 502 or
400, not a stream that ends at once).  Iterating yields `Chunk`s; `aclose()`
closes the upstream request, which is how a cancelled reply stops the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.events import Usage


@dataclass(frozen=True, slots=True)
class ToolCallPiece:
    """A piece of one of the model's tool calls (`events.ToolCallDelta`'s fields)."""

    index: int
    arguments: str = ""
    call_id: str | None = None
    name: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallPiece, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str
    owned_by: str
    created: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owned_by": self.owned_by,
            "created": self.created,
        }


class ReplyStream(Protocol):
    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    name: str

    async def list_models(self) -> Sequence[ModelInfo]: ...

    async def open(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> ReplyStream: ...
