"""OpenAI chat completions: request decoding and SSE chunk encoding (docs/PROTOCOLS.md §2).

Stream shape, one SSE event per chunk::

    data: {"id": "chatcmpl-…", "object": "chat.completion.chunk", "created": 1700000000,
           "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"},
                                      "finish_reason": null}]}
    ...
    data: {... "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
           "id": "call_1", "type": "function",                    a tool call's first piece
           "function": {"name": "f", "arguments": ""}}]}, ...}]}
    data: {... "delta": {"tool_calls": [{"index": 0,
           "function": {"arguments": "{\\"a\\": 1}"}}]} ...}             and its arguments
    data: {... "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data: {... "choices": [], "usage": {...}}        only with stream_options.include_usage
    data: [DONE]

Tool calling is relayed: the tools a request offers go to the model server with
`tool_choice` and `parallel_tool_calls`, and the calls the model makes come
back as `tool_calls` deltas (streamed) or the message's `tool_calls` (not
streamed), numbered the OpenAI way whatever the server did
(`upstream/tool_calls.py`), with the server's `finish_reason` (`"tool_calls"`,
or `"stop"` from some when `tool_choice` forced the call).  The conversation that follows
(assistant messages with `tool_calls`, `tool` messages with the results) goes
to the model server as the client wrote it.  OpenAI's deprecated `functions`
are refused, with the name of their replacement.

A failure mid-stream is one `data: {"error": {message, type, param, code}}` event
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
    ToolCallDelta,
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
# What OpenAI-compatible servers take beyond those, from a client that writes for its
# server (the `openai` package's `extra_body`): the pure API passes them on as well.
# Not the web app's chats: Open WebUI keeps such options for Ollama's own API, and an
# OpenAI server refuses a request that names one.
SERVER_PARAMS = frozenset(
    {
        # OpenAI's newer options
        "verbosity",
        "prediction",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        # vLLM and SGLang (`chat_template_kwargs`: Qwen3's `enable_thinking`)
        "chat_template_kwargs",
        "repetition_penalty",
        "min_tokens",
        "stop_token_ids",
        "ignore_eos",
        "skip_special_tokens",
        "include_stop_str_in_output",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        # llama.cpp's server
        "typical_p",
        "repeat_last_n",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "grammar",
        "json_schema",
        "cache_prompt",
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "xtc_probability",
        "xtc_threshold",
        # OpenRouter
        "reasoning",
        "provider",
        "models",
        "transforms",
    }
)
_PURE_API_PARAMS = PASSTHROUGH_PARAMS | SERVER_PARAMS
# Options whose answer is part of the reply the gateway does not relay: refused, as
# `n` other than 1 is, rather than answered without it.
UNRELAYED_PARAMS = {
    "logprobs": "token log probabilities",
    "top_logprobs": "token log probabilities",
    "audio": "audio output",
}
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Tool calling (module docstring): what goes to the model server as it came, checked
# only for its shape; OpenAI's own bound on the tools one request offers.
TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls")
MAX_TOOLS = 128


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


def include_usage_of(body: Mapping[str, Any]) -> bool:
    """`stream_options.include_usage`, a boolean (the string "false" is no false)."""
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise BadRequest("'stream_options' must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequest("'stream_options.include_usage' must be a boolean")
    return include_usage


def decode_request(body: Any, tools: bool = True) -> Ask:
    """Validate a `/v1/chat/completions` body; raise BadRequest naming the fault.
    `tools`: whether the route relays tool calling (RAGFlow's answers with an
    assistant's own prompt, and refuses a request that offers tools)."""
    body, model, stream = decode_common(body)
    messages = decode_messages(body.get("messages"))
    include_usage = include_usage_of(body)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("Only n=1 is supported")
    for key, what in UNRELAYED_PARAMS.items():
        if body.get(key) not in (None, False):
            raise BadRequest(f"{key!r} is not supported: the gateway does not relay {what}")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise BadRequest("'modalities' other than [\"text\"] is not supported")
    params = {key: value for key, value in body.items() if key in _PURE_API_PARAMS}
    params.update(decode_tools(body, tools))
    return Ask(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        params=params,
    )


def decode_tools(body: Mapping[str, Any], relayed: bool = True) -> dict[str, Any]:
    """The request's tool-calling parameters, for the model server; BadRequest for a
    shape no server takes.  With no tools offered (none, or an empty list, which
    some servers refuse) nothing goes: `tool_choice` and `parallel_tool_calls` alone
    are refused by OpenAI and vLLM, and mean nothing without tools."""
    if body.get("functions"):
        raise BadRequest(
            "'functions': OpenAI's deprecated form of tool calling is not supported; "
            "send 'tools' (and 'tool_choice')"
        )
    offered = body.get("tools")
    if offered is None or offered == []:
        return {}
    if not relayed:
        raise BadRequest(
            "Tool calling ('tools') is not supported on this route: it answers with the "
            "assistant's own prompt; send the request without it"
        )
    if not isinstance(offered, list) or not all(isinstance(tool, Mapping) for tool in offered):
        raise BadRequest("'tools' must be an array of objects")
    if len(offered) > MAX_TOOLS:
        raise BadRequest(f"'tools' may offer at most {MAX_TOOLS} tools")
    for index, tool in enumerate(offered):
        if tool.get("type", "function") != "function":
            # OpenAI's custom tools come back in another shape, which is not relayed.
            raise BadRequest(f"tools[{index}]: only 'function' tools are supported")
    params = {key: body[key] for key in TOOL_PARAMS if body.get(key) is not None}
    if not isinstance(params.get("tool_choice", ""), str | Mapping):
        raise BadRequest("'tool_choice' must be a string or an object")
    if not isinstance(params.get("parallel_tool_calls", True), bool):
        raise BadRequest("'parallel_tool_calls' must be a boolean")
    return params


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
        if isinstance(event, ToolCallDelta):
            return [self._chunk({"tool_calls": [tool_call_delta(event)]}, None)]
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


def tool_call_delta(event: ToolCallDelta) -> dict[str, Any]:
    """One piece of a call, as a streamed `delta.tool_calls` entry has it."""
    call: dict[str, Any] = {"index": event.index}
    if event.call_id is not None:
        call["id"] = event.call_id
    if event.call_id is not None or event.name is not None:
        call["type"] = "function"
    if event.name is None:
        call["function"] = {"arguments": event.arguments}
    else:
        call["function"] = {"name": event.name, "arguments": event.arguments}
    if event.extra:
        call.update(event.extra)  # none of a call's own keys (`upstream/tool_calls.py`)
    return call


def tool_calls(events: Iterable[Event]) -> list[dict[str, Any]]:
    """A reply's tool calls whole, as a `chat.completion` message has them: each
    call's pieces joined, the calls in the order of their index."""
    calls: dict[int, tuple[dict[str, Any], list[str]]] = {}
    for event in events:
        if not isinstance(event, ToolCallDelta):
            continue
        if event.index not in calls:
            function = {"name": "", "arguments": ""}
            calls[event.index] = ({"id": "", "type": "function", "function": function}, [])
        call, arguments = calls[event.index]
        if event.call_id is not None:
            call["id"] = event.call_id
        if event.name is not None:
            call["function"]["name"] = event.name
        if event.extra:
            call.update(event.extra)
        arguments.append(event.arguments)
    for call, arguments in calls.values():
        call["function"]["arguments"] = "".join(arguments)
    return [calls[index][0] for index in sorted(calls)]


def completion_body(
    completion_id: str,
    model: str,
    created: int,
    content: str,
    finish_reason: str,
    usage: Usage,
    reasoning: str = "",
    calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object; a message that is only tool calls
    has no content (`null`, as OpenAI's)."""
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage.as_dict(),
    }


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    """OpenAI's error object; `param` is always there, as OpenAI's (null: the message
    names the field)."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


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
