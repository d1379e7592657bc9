"""A reply's tool calls, numbered as its client expects whatever its server did.

The OpenAI way, which the `openai` package's stream helper and agent frameworks
rely on: calls numbered 0, 1, 2… by `index`, each call's first piece with its
`id` and `name`, every later piece only more of its `arguments`.  Servers stray
from it, and a client joining the pieces by `index` then merges two calls into
one (`"{…}{…}"`, `id` "call_acall_b") or fails on an index it has not seen:

    two calls under one index (a parser that restarts it at each chunk)
    no `index` at all, each call whole in its own chunk
    an index that starts at 1 or goes back
    the id and name repeated on every piece, or a call with no id

`Calls` reads each server's delta entries in order and gives each piece the
number the client expects: a call is new when it brings an id not seen yet (or,
with none, a name or an index that is not the latest call's); anything else is
more of the call it names, or, named by nothing, of the latest one.  Its id and
name go out once, with its first piece; a call with no id gets one made up,
since a client answers each call by its id.  No I/O, one instance per reply.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from gateway import jsonwire
from gateway.upstream import ToolCallPiece

# Tool calls in one reply (OpenAI's own bound on the tools a request may offer).
MAX_TOOL_CALLS = 128


class Unreadable(ValueError):
    """An entry that is no piece of a call: skipped (and noted for the log)."""


class BadCalls(ValueError):
    """Calls that cannot be relayed, which ends the reply: the text says what the
    server did ("made more than 128 tool calls")."""


def made_up_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class Calls:
    """The calls of one reply so far; `piece(entry)` for each entry of each delta's
    `tool_calls` list, in order."""

    def __init__(self, new_id: Callable[[], str] = made_up_id) -> None:
        self._new_id = new_id
        self._ids: list[str] = []
        self._names: list[str | None] = []
        self._by_id: dict[str, int] = {}
        self._by_index: dict[int, int] = {}  # the server's index → the latest call at it

    def piece(self, entry: Any) -> ToolCallPiece | None:
        """The piece `entry` brings, numbered; None for one that brings nothing new (an
        empty continuation, or a repeated id and name).  `Unreadable`, `BadCalls`."""
        if not isinstance(entry, dict):
            raise Unreadable
        function = entry.get("function")
        if not isinstance(function, dict):
            function = {}
        index = entry.get("index")
        if type(index) is not int or index < 0:
            index = None
        call_id = _text(entry.get("id"))
        name = _text(function.get("name"))
        arguments = _arguments(function.get("arguments"))
        if call_id is None and name is None and not arguments:
            if self._ids and (index is None or index in self._by_index):
                return None  # servers send empty pieces
            raise Unreadable
        number = self._known(index, call_id, name)
        if number is None:
            return self._start(call_id, name, index, arguments)
        if name is not None:
            if self._names[number] is None:
                self._names[number] = name  # a name that came after the id: sent once
            else:
                name = None  # repeated
        if not arguments and name is None:
            return None
        return ToolCallPiece(number, arguments, None, name)

    def _known(self, index: int | None, call_id: str | None, name: str | None) -> int | None:
        """The call an entry is more of; None when it starts one."""
        if call_id is not None:
            number = self._by_id.get(call_id)
            if number is not None and index is not None:
                self._by_index[index] = number
            return number
        if index is not None:
            number = self._by_index.get(index)
        elif self._ids:
            number = len(self._ids) - 1
        else:
            return None
        if number is not None and name is not None and self._names[number] not in (None, name):
            return None  # another function under the same index (or none): another call
        return number

    def _start(
        self, call_id: str | None, name: str | None, index: int | None, arguments: str
    ) -> ToolCallPiece:
        number = len(self._ids)
        if number >= MAX_TOOL_CALLS:
            raise BadCalls(f"made more than {MAX_TOOL_CALLS} tool calls")
        call_id = call_id if call_id is not None else self._new_id()
        self._ids.append(call_id)
        self._names.append(name)
        self._by_id[call_id] = number
        if index is not None:
            self._by_index[index] = number
        return ToolCallPiece(number, arguments, call_id, name)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _arguments(value: Any) -> str:
    """A call's arguments as the JSON text OpenAI sends: a string as it came, an
    object (some servers send one) written as that text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        try:
            return jsonwire.dumps(value)
        except (RecursionError, ValueError, TypeError):  # nested past what can be written
            raise BadCalls("sent tool call arguments that cannot be written as JSON") from None
    return ""
