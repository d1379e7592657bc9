"""OpenAI chat completions: request decoding and SSE chunk encoding (docs/PROTOCOLS.md §2).

Stream shape, one SSE event per chunk::

    data: {"id": "chatcmpl-…", "object": "chat.completion.chunk", "created": 1700000000,
           "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"},
                                      "finish_reason": null}]}
    ...
    data: {... "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data: {... "choices": [], "usage": {...}}        only with stream_options.include_usage
    data: [DONE]

A failure mid-stream is one `data: {"error": {message, type, code}}` event
then `[DONE]`: the `openai` package raises on it instead of hanging.

Per-delta encoding is on the hot path: the constant part of a content chunk
is rendered once per reply, and only the delta text is JSON-escaped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway import jsonwire
from gateway.commands import Ask, Command
from gateway.errors import BadRequest, GatewayError
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.flavours.sse import data_frame
from gateway.jsonwire import dumps as _dumps

DONE = b"data: [DONE]\n\n"

# Sampling options passed through to the upstream unchanged.
PASSTHROUGH_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "logit_bias",
        "user",
        "response_format",
        "top_k",
        "min_p",
        "repeat_penalty",
        "reasoning_effort",
    }
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Tool calling: the gateway relays a reply's text and reasoning, not a model's calls,
# so a request that offers tools is refused rather than answered as if it offered
# none (the tools never reached the model server, and a call it made anyway was lost:
# `finish_reason: "tool_calls"` and no `tool_calls`).
TOOL_PARAMS = ("tools", "functions")


def decode_common(body: Any) -> tuple[Mapping[str, Any], str, bool]:
    """The body, `model` and `stream` every chat-completions flavour shares."""
    if not isinstance(body, Mapping):
        raise BadRequest("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    return body, model, stream


def decode_request(body: Any) -> Ask:
    """Validate a `/v1/chat/completions` body; raise BadRequest naming the fault."""
    body, model, stream = decode_common(body)
    messages = decode_messages(body.get("messages"))
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise BadRequest("'stream_options' must be an object")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("Only n=1 is supported")
    offered = [key for key in TOOL_PARAMS if body.get(key)]
    if offered:
        raise BadRequest(
            f"Tool calling ({', '.join(repr(key) for key in offered)}) is not supported: "
            "the gateway relays text replies; send the request without it"
        )
    params = {key: body[key] for key in PASSTHROUGH_PARAMS if key in body}
    return Ask(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        params=params,
    )


def decode_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadRequest(f"messages[{index}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{index}].content must be a string or an array")
    return [dict(message) for message in messages]


class OpenAIFlavour:
    """The `Flavour` of `/v1/chat/completions` (`flavours/base.py`): a JSON body in,
    SSE events out.  One per route: `space` is whether `data:` takes one (not on
    RAGFlow's OpenAI-compatible route); `clock` dates each exchange's chunks."""

    def __init__(self, space: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.space = space
        self._clock = clock

    def decode(self, frame: Any) -> Ask:
        return decode_request(frame)

    def encoder(self, request: Command | None = None) -> ChunkEncoder:
        """The exchange's encoder: the request names the model and asks for the usage
        chunk; without it, the model is the replying one and no usage chunk is sent."""
        created = int(self._clock())
        if isinstance(request, Ask):
            return ChunkEncoder(request.model, created, request.include_usage, self.space)
        return ChunkEncoder("", created, False, self.space)


class ChunkEncoder:
    """Encodes one reply's events as `chat.completion.chunk` SSE events.

    The completion id is the reply's message id, learnt from `ReplyStarted`
    (always the first event of a reply), and so is the model when none is given.
    """

    def __init__(self, model: str, created: int, include_usage: bool, space: bool = True) -> None:
        self._model = model
        self._model_given = bool(model)
        self._created = created
        self._include_usage = include_usage
        # RAGFlow's OpenAI-compatible route writes `data:` with no space.
        self._space = space
        self._data = b"data: " if space else b"data:"
        self._done = DONE if space else b"data:[DONE]\n\n"
        self._start("")

    def _start(self, completion_id: str) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        head = _dumps(self._head)[:-1]  # without the closing brace
        self._content_prefix = (head + ',"choices":[{"index":0,"delta":{"content":').encode()
        self._reasoning_prefix = (
            head + ',"choices":[{"index":0,"delta":{"reasoning_content":'
        ).encode()
        self._suffix = b'},"finish_reason":null}]}\n\n'

    def encode(self, event: Event) -> list[bytes]:
        if isinstance(event, TextDelta):
            return [self._data + self._content_prefix + jsonwire.text(event.text) + self._suffix]
        if isinstance(event, ReasoningDelta):
            return [self._data + self._reasoning_prefix + jsonwire.text(event.text) + self._suffix]
        if isinstance(event, ReplyStarted):
            if not self._model_given:
                self._model = event.model
            self._start(event.message_id)
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        if isinstance(event, ReplyFinished):
            frames = [self._chunk({}, event.finish_reason)]
            if self._include_usage:
                usage = {**self._head, "choices": [], "usage": event.usage.as_dict()}
                frames.append(data_frame(_dumps(usage), self._space))
            frames.append(self._done)
            return frames
        if isinstance(event, ReplyFailed):
            error = error_body(event.message, "server_error", event.code)
            return [data_frame(_dumps(error), self._space), self._done]
        return []

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        chunk = {
            **self._head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return data_frame(_dumps(chunk), self._space)


def completion_body(
    completion_id: str,
    model: str,
    created: int,
    content: str,
    finish_reason: str,
    usage: Usage,
    reasoning: str = "",
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage.as_dict(),
    }


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_for(error: GatewayError) -> dict[str, Any]:
    return error_body(error.message, error.openai_type, error.code)


def models_body(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`GET /v1/models`; each model mapping has id, created and owned_by."""
    return {"object": "list", "data": [model_body(m) for m in models]}


def model_body(model: Mapping[str, Any]) -> dict[str, Any]:
    """`GET /v1/models/{id}`: one model, as it is in the list."""
    return {
        "id": model["id"],
        "object": "model",
        "created": model["created"],
        "owned_by": model["owned_by"],
    }
