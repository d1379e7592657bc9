"""A reply's tool calls, numbered as its client expects whatever its server did.

The OpenAI way, which the `openai` package's stream helper and agent frameworks
rely on: calls numbered 0, 1, 2… by `index`, each call's first piece with its
`id` and `name`, every later piece only more of its `arguments` (a JSON text cut
anywhere).  Servers stray from it, and a client joining the pieces by `index`
then merges two calls into one (`"{…}{…}"`, `id` "call_acall_b") or fails on an
index it has not seen:

    two calls under one index (a parser that restarts it at each chunk)
    no `index` at all, each call whole in its own chunk
    an index that starts at 1, goes back, or is the tool's place in the request
    the id and name repeated on every piece, or a call with no id
    one id for several calls (DeepSeek's parallel calls share one)
    an id that changes after the first piece (a new one on every piece, even)

`Calls` reads each server's delta entries in order and gives each piece the
number the client expects.  An entry belongs to the call at its index, else to
the call its id names, else (no index) to the latest call.  It starts a new call
when there is none there, when it names another function, or, once that call's
arguments are one whole JSON value (`_Call` follows their brackets and strings),
when it brings another id, arguments sent whole as an object, or the call's own
id or name again with more arguments; otherwise it is more of that call, a stray
id ignored.  A piece of bare arguments at an index not seen is more of the
latest call while that one is unfinished.  A call's id and name go out once
(with its first piece, or the piece that brings the name late); a call with no
id, or with one another call has, gets one made up, since a client answers each
call by its id.  Whatever else a server puts on a call (Gemini's
`extra_content`) goes with the piece it came on.  No I/O, one instance per reply.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from gateway.text import encodable, storable_value
from gateway.upstream import ToolCallPiece

# Tool calls in one reply (OpenAI's own bound on the tools a request may offer).
MAX_TOOL_CALLS = 128


class Unreadable(Exception):
    """An entry that is no piece of a call: skipped (and noted for the log)."""


class BadCalls(Exception):
    """Calls that cannot be relayed, which ends the reply: the text says what the
    server did ("made more than 128 tool calls")."""


def made_up_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# What changes where a JSON text is: a quote, a backslash, a bracket.
_STRUCTURE = re.compile(r'["\\{}\[\]]')


class _Call:
    """One call: its id and name, and whether its arguments so far are one whole
    JSON value (their depth in brackets, and whether a string is open)."""

    __slots__ = ("announced", "call_id", "depth", "escaped", "in_string", "name", "whole")

    def __init__(self, call_id: str, name: str | None) -> None:
        self.call_id = call_id
        self.name = name
        # Its id or name came again, alone, once it was whole: another call's head,
        # if arguments follow (`Calls.piece`).
        self.announced = False
        self.whole = False  # a whole JSON value (an object or array closed)
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def took(self, arguments: str, sent_whole: bool) -> None:
        if sent_whole:
            self.whole = True
            return
        if not arguments:
            return  # an empty piece leaves a backslash before it escaping what follows
        # The character after a backslash in a string is escaped: skipped (it may be
        # the first of the next piece, when a piece ended with the backslash).
        skip = 0
        if self.escaped:
            self.escaped, skip = False, 1
        for match in _STRUCTURE.finditer(arguments, skip):
            if match.start() < skip:
                continue
            char = match[0]
            if self.in_string:
                if char == "\\":
                    skip = match.end() + 1
                    self.escaped = skip > len(arguments)
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
                self.whole = False
            elif char in "}]" and self.depth > 0:
                self.depth -= 1
                self.whole = self.depth == 0


class Calls:
    """The calls of one reply so far; `piece(entry)` for each entry of each delta's
    `tool_calls` list, in order."""

    def __init__(self, new_id: Callable[[], str] = made_up_id) -> None:
        self._new_id = new_id
        self._calls: list[_Call] = []
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
        raw = function.get("arguments")
        arguments = _arguments(raw)
        sent_whole = isinstance(raw, dict | list)
        extra = _extra(entry)
        if call_id is None and name is None and not arguments and extra is None:
            if self._calls and (index is None or index in self._by_index):
                return None  # servers send empty pieces
            raise Unreadable
        at = self._addressed(index, call_id, name, sent_whole)
        if at is not None:
            call = self._calls[at]
            if (
                call.whole
                and not (arguments or sent_whole)
                and (call_id is not None or name is not None)
                and call_id in (None, call.call_id)
                and name in (None, call.name)
            ):
                # Its own id or name again, and nothing more, once it is whole: the
                # head of another call of the same function (a server that gives
                # parallel calls one id and one index) if arguments follow.
                call.announced = True
                return None
            fresh = index is not None and index not in self._by_index
            if not self._starts(call, fresh, call_id, name, arguments, sent_whole):
                return self._more(at, index, name, arguments, sent_whole, extra)
            if call.announced:
                name = name or call.name
                call.announced = False
        number = self._start(call_id, name)
        call = self._calls[number]
        self._map(index, number)
        call.took(arguments, sent_whole)
        return ToolCallPiece(number, arguments, call.call_id, name, extra)

    def _more(
        self,
        number: int,
        index: int | None,
        name: str | None,
        arguments: str,
        sent_whole: bool,
        extra: dict[str, Any] | None,
    ) -> ToolCallPiece | None:
        """More of call `number`: its id is not sent again, nor its name but late."""
        call = self._calls[number]
        self._map(index, number)
        call.took(arguments, sent_whole)
        if name is not None:
            if call.name is None:
                call.name = name  # a name that came after the id: sent once
            else:
                name = None  # repeated
        if not arguments and name is None and extra is None:
            return None
        return ToolCallPiece(number, arguments, None, name, extra)

    def _addressed(
        self, index: int | None, call_id: str | None, name: str | None, sent_whole: bool
    ) -> int | None:
        """The call an entry names: the one at its index, else the one its id names,
        else (no index, or bare arguments at an index not seen) the latest."""
        if index is not None and index in self._by_index:
            return self._by_index[index]
        if call_id is not None and call_id in self._by_id:
            return self._by_id[call_id]
        if not self._calls:
            return None
        if index is None or (call_id is None and name is None and not sent_whole):
            return len(self._calls) - 1
        return None

    @staticmethod
    def _starts(
        call: _Call,
        fresh: bool,
        call_id: str | None,
        name: str | None,
        arguments: str,
        sent_whole: bool,
    ) -> bool:
        """Whether an entry addressed to `call` is another call's start (`fresh`: at an
        index not seen before)."""
        if name is not None and call.name is not None and name != call.name:
            return True  # another function
        if not call.whole:
            return False  # more of it, whatever id it says (one that changes mid-call)
        return (
            (call_id is not None and call_id != call.call_id)  # another id
            or sent_whole
            # More arguments once it is whole: with its own id or name again (a
            # server whose parallel calls share one id), after its head came again
            # (`announced`), or at an index not seen.
            or (
                bool(arguments)
                and (call_id is not None or name is not None or call.announced or fresh)
            )
        )

    def _start(self, call_id: str | None, name: str | None) -> int:
        number = len(self._calls)
        if number >= MAX_TOOL_CALLS:
            raise BadCalls(f"made more than {MAX_TOOL_CALLS} tool calls")
        if call_id is None or call_id in self._by_id:
            call_id = self._new_id()  # a client answers each call by its id: one each
        self._calls.append(_Call(call_id, name))
        self._by_id[call_id] = number
        return number

    def _map(self, index: int | None, number: int) -> None:
        """The server's index now names call `number` (bounded: at most one entry per
        index a server used, and no more indexes than calls can be)."""
        if index is not None and (index in self._by_index or len(self._by_index) < MAX_TOOL_CALLS):
            self._by_index[index] = number


# An entry's own keys; the rest is the server's, relayed (`_extra`).
_KNOWN = frozenset({"index", "id", "type", "function"})


def _extra(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What else the server put on a call (Gemini's `extra_content` with its thought
    signature, which the client must send back with the call), as it came; BadCalls
    for what cannot be written out again."""
    extra = {key: value for key, value in entry.items() if key not in _KNOWN}
    if not extra:
        return None
    try:
        _strict(extra)
        stored: dict[str, Any] = storable_value(extra)  # as client encodings can carry
    except (RecursionError, ValueError, TypeError):
        raise BadCalls("sent a tool call that cannot be written as JSON") from None
    return stored


def _strict(value: Any) -> str:
    """`value` as JSON every parser reads (no NaN); ValueError, RecursionError for
    what cannot be written so."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _text(value: Any) -> str | None:
    return encodable(value) if isinstance(value, str) and value else None


def _arguments(value: Any) -> str:
    """A call's arguments as the JSON text OpenAI sends: a string as it came, an
    object (some servers send one) written as that text."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict | list):
        try:
            return encodable(_strict(value))
        except (RecursionError, ValueError, TypeError):  # nested past writing, or NaN
            raise BadCalls("sent tool call arguments that cannot be written as JSON") from None
    return ""
