"""An OpenAI-compatible server's streamed answer, decoded without I/O.

Bytes in, as they arrive, in any pieces; `Chunk`s out (`upstream/__init__.py`)::

    data: {"choices": [{"delta": {"content": "Hel",              → Chunk(text="Hel")
                                  "reasoning_content": "…"},     → reasoning (vLLM, DeepSeek;
                        "finish_reason": null}]}                   Ollama says "reasoning")
    data: {"choices": [{"delta": {"tool_calls": [{"index": 0,    → a piece of a tool call
                        "id": "call_1", "function": {"name":      (`ToolCallPiece`, numbered
                        "f", "arguments": "{\\"a"}}]}}]}              by `tool_calls.py` as the
                                                                   client expects)
    data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}  → Chunk(finish_reason="stop")
    data: {"choices": [], "usage": {"prompt_tokens": 3,          → Chunk(usage=Usage(3, 7))
                                    "completion_tokens": 7}}
    data: [DONE]                                                 → `done`: the rest of the
                                                                   body is not the reply's

A stream that breaks the rules raises `BadStream`: a chunk that is not a JSON
object, an `{"error": …}` chunk, an event past the size bound, or a body that
ends with neither a finish_reason nor [DONE].  Its `message` names the model
and the fault, for the client; its `detail` (what was wrong: the server's own
error object, or the shape of what it sent, never its text) is for the log
only, where `upstream/openai.py` puts it with the server's address.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gateway import jsonwire
from gateway.events import Usage
from gateway.flavours.sse import SSEParser
from gateway.text import encodable
from gateway.upstream import Chunk, ToolCallPiece
from gateway.upstream.tool_calls import BadCalls, Calls, Unreadable, made_up_id

MAX_EVENT_BYTES = 1024 * 1024
# How a bad payload is described in the log (`shape`): at most this many characters,
# levels, keys of an object, characters of a key.
SHAPE_CHARS = 200
SHAPE_DEPTH = 3
SHAPE_KEYS = 8
SHAPE_KEY_CHARS = 40
# Skipped deltas described in the log, of a reply (the rest are counted).
MAX_SHAPES = 8


class BadStream(Exception):
    """The upstream's stream cannot be read as a reply."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ChunkDecoder:
    """One streamed answer of `model`; `feed` each piece of the body, then `close`.

    `done` is set at [DONE] (then `feed` takes nothing more); `finished` once
    a chunk had a finish_reason.
    """

    def __init__(
        self,
        model: str,
        max_event_bytes: int = MAX_EVENT_BYTES,
        new_call_id: Callable[[], str] = made_up_id,
    ) -> None:
        self._model = model
        self._parser = SSEParser(max_event_bytes)
        self._max_event_bytes = max_event_bytes
        self._calls = Calls(new_call_id)
        self.done = False
        self.finished = False
        # Deltas skipped (content that is not text, a tool call with nothing in it):
        # counted, the first few described by their shape (`shape`), for the log
        # (`upstream/openai.py` warns once per reply): read leniently, never silently.
        self.skipped = 0
        self.unreadable: list[str] = []

    def feed(self, data: bytes) -> Iterator[Chunk]:
        """The chunks `data` completes, lazily: those before a fault come out before
        its BadStream, however the body was cut.  Takes `data` at once.  A piece that
        is one whole event (the usual read) is decoded at once, its fault raised here."""
        if self.done:
            return iter(())
        payload = self._parser.single(data)
        if payload is None:
            return self._chunks(self._parser.events(data))
        # One whole event, as model servers send them: no generator.
        chunk = self._payload(payload)
        return iter(()) if chunk is None else iter((chunk,))

    def close(self) -> Iterator[Chunk]:
        """The body ended: a last event without its blank line still counts (and comes
        out) before the BadStream of a reply that was not complete."""
        if self.done:
            return
        yield from self._chunks(self._parser.close())
        if not (self.done or self.finished):
            raise BadStream(
                f"The model server for '{self._model}' closed the stream mid-reply",
                "the body ended without a finish_reason or [DONE]",
            )

    def _chunks(self, payloads: Iterable[str]) -> Iterator[Chunk]:
        try:
            for payload in payloads:
                chunk = self._payload(payload)
                if chunk is None:
                    return
                yield chunk
        except ValueError as exc:  # the parser's bound
            raise BadStream(
                f"The model server for '{self._model}' sent an event past the gateway's "
                f"bound of {self._max_event_bytes} bytes (one chunk, or a tool call sent whole)",
                str(exc),
            ) from None

    def _payload(self, payload: str) -> Chunk | None:
        """One event's chunk; None for `[DONE]`, after which nothing counts."""
        if payload.strip() == "[DONE]":
            self.done = True
            return None
        chunk = self._decode(payload)
        self.finished = self.finished or chunk.finish_reason is not None
        return chunk

    def _decode(self, payload: str) -> Chunk:
        data = self._object(payload)
        if "error" in data:
            raise BadStream(
                f"The model server for '{self._model}' failed mid-reply",
                _as_json(data["error"]),
            )
        usage = _usage(data.get("usage"))
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return Chunk(usage=usage)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        # vLLM/DeepSeek say reasoning_content, Ollama and OpenRouter say reasoning.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        reason = choice.get("finish_reason")
        content = delta.get("content")
        text = _content(content)
        if not text and content not in (None, "", []) and not isinstance(content, str):
            # A number, an object, parts with no text: nothing a reply can show.
            self._skipped(content)
        calls = delta.get("tool_calls")
        return Chunk(
            text=text,
            reasoning=_text(reasoning),
            finish_reason=reason if isinstance(reason, str) and reason else None,
            usage=usage,
            tool_calls=self._tool_calls(calls) if calls else (),
        )

    def _tool_calls(self, raw: Any) -> tuple[ToolCallPiece, ...]:
        """A delta's pieces of tool calls, numbered as the client expects (`Calls`)."""
        if not isinstance(raw, list):
            self._skipped(raw)
            return ()
        pieces = []
        for entry in raw:
            try:
                piece = self._calls.piece(entry)
            except Unreadable:
                self._skipped(entry)
                continue
            except BadCalls as exc:
                raise BadStream(
                    f"The model server for '{self._model}' {exc}", shape(entry)
                ) from None
            if piece is not None:
                pieces.append(piece)
        return tuple(pieces)

    def _skipped(self, value: Any) -> None:
        self.skipped += 1
        if len(self.unreadable) < MAX_SHAPES:
            self.unreadable.append(shape(value))

    def _object(self, payload: str) -> dict[str, Any]:
        try:
            data = jsonwire.loads(payload)
        except ValueError as exc:
            raise BadStream(
                f"The model server for '{self._model}' sent a chunk that is not JSON",
                f"{len(payload)} characters: {str(exc)[:SHAPE_CHARS]}",
            ) from None
        if not isinstance(data, dict):
            raise BadStream(
                f"The model server for '{self._model}' sent a chunk that is not an object",
                shape(data),
            )
        return data


def _as_json(value: Any) -> str:
    """A server's error object as it sent it, for the log (its shape when nested past
    what can be written)."""
    try:
        return json.dumps(value, default=str)
    except RecursionError:
        return shape(value)


def shape(value: Any, depth: int = 0) -> str:
    """What a value a server sent is, for the log, without what it says: a reply's
    text must never reach the log (SECURITY.md), and a delta the gateway could not
    read may hold it.  Strings by their length, numbers by their type, objects by
    their keys, arrays by their first item and length, three levels deep, cut to
    `SHAPE_CHARS`: `{index: int, function: {name: str(7), arguments: str(24)}}`."""
    if isinstance(value, str):
        return f"str({len(value)})"
    if value is None or isinstance(value, bool | int | float):
        return "null" if value is None else type(value).__name__
    if depth >= SHAPE_DEPTH:
        return "…"
    if isinstance(value, dict):
        keys = list(value)[:SHAPE_KEYS]
        items = ", ".join(
            f"{str(key)[:SHAPE_KEY_CHARS]}: {shape(value[key], depth + 1)}" for key in keys
        )
        more = ", …" if len(value) > len(keys) else ""
        return f"{{{items}{more}}}"[:SHAPE_CHARS]
    if isinstance(value, list):
        if not value:
            return "[]"
        more = f", … {len(value)} items" if len(value) > 1 else ""
        return f"[{shape(value[0], depth + 1)}{more}]"[:SHAPE_CHARS]
    return type(value).__name__


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(_count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens")))


def _count(value: Any) -> int:
    """A token count as servers send it (an int, sometimes a float or a string); 0 if none."""
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def _text(value: Any) -> str:
    return encodable(value) if isinstance(value, str) else ""


# The types of a content part that carry text: OpenAI's and Mistral's "text",
# the Responses API's "output_text".
_TEXT_PARTS = ("text", "output_text")


def _content(value: Any) -> str:
    """A content delta's text: a string, or the text of a list of content parts
    (`[{"type": "text", "text": "…"}]`, as Mistral and some proxies stream it);
    anything else (a number, null, an object) has none."""
    if isinstance(value, str):
        return encodable(value)
    if not isinstance(value, list):
        return ""
    texts = [
        part["text"]
        for part in value
        if isinstance(part, dict)
        and isinstance(part.get("text"), str)
        and part.get("type", "text") in _TEXT_PARTS
    ]
    return encodable("".join(texts))
