"""RAGFlow: the HTTP API under `/ragflow` and the WebSocket chat (docs/PROTOCOLS.md §3).

Every answer is HTTP 200 with an envelope; errors are a non-zero `code`::

    {"code": 0, "message": "", "data": ...}            success
    {"code": 102, "message": "You don't own the chat"}  failure (RetCode, below)

A streamed answer (SSE `data:<json>\\n\\n`, no space, or one WebSocket text
frame per chunk)::

    {"code": 0, "message": "", "data": {"answer", "reference": {}, "audio_binary": null,
                                        "id": <message id>, "session_id"}}
    ...
    {"code": 0, "message": "", "data": true}                     the end marker

`answer` is **cumulative** (the text so far: RAGFlow ≤ 0.23, what released
SDK examples expect, `ans.content[len(cont):]`) or a **delta** with
`"final": false`, then `{"final": true, "answer": ""}` before the end marker
(RAGFlow ≥ 0.24).  A failure mid-answer is
`{"code": 500, "message", "data": {"answer": "**ERROR**: …", "reference": []}}`
then the end marker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway import jsonwire
from gateway.commands import AnswerMode as AnswerMode
from gateway.commands import Command, Resume, resume_of
from gateway.commands import Question as Question
from gateway.errors import (
    AuthError,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    PeerError,
    ProtocolError,
    ServerError,
)
from gateway.events import (
    Event,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    TextDelta,
)

# What RAGFlow shows for a field its owner never set.
from gateway.flavours.ragflow_defaults import DEFAULT_DESCRIPTION, PROMPT_DEFAULTS
from gateway.text import client_json

ANSWER_MODES: tuple[AnswerMode, ...] = ("cumulative", "delta")

# RAGFlow's RetCode values.
SUCCESS = 0
EXCEPTION_ERROR = 100
ARGUMENT_ERROR = 101
DATA_ERROR = 102
AUTHENTICATION_ERROR = 109
BAD_REQUEST = 400
SERVER_ERROR = 500

END = '{"code":0,"message":"","data":true}'
AUTH_REQUIRED = "Authentication required. Please provide valid API token or user session."


def ok(data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": SUCCESS, "message": ""}
    if data is not None:
        body["data"] = data
    return body


class DataError(PeerError):
    """RAGFlow's DATA_ERROR (102): a thing that is not there, not yours, or clashes."""


def code_for(error: GatewayError) -> int:
    if isinstance(error, AuthError):
        return AUTHENTICATION_ERROR
    if isinstance(error, DataError | NotFound | Conflict | Forbidden):
        return DATA_ERROR
    if isinstance(error, PeerError):
        return ARGUMENT_ERROR
    return EXCEPTION_ERROR


def error_body(error: GatewayError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code_for(error), "message": error.message}
    if isinstance(error, AuthError):
        body["data"] = False  # as RAGFlow's token_required answers
    return body


def http_date(ms: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ms / 1000))


# -- assistants ("chats" in RAGFlow's API) -----------------------------------------
def decode_assistant(body: Any, *, creating: bool, known_models: list[str]) -> dict[str, Any]:
    """The settings of an assistant as sent to create (all) or update (some) it.

    Returns only what the body sets: name, avatar, description, dataset_ids,
    llm (merged by the caller), prompt.  Raises the error RAGFlow answers.
    """
    if not isinstance(body, Mapping):
        raise BadRequest("Body must be a JSON object")
    settings: dict[str, Any] = {}
    if creating or "name" in body:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError("`name` is required." if creating else "`name` cannot be empty.")
        settings["name"] = name.strip()
    for key in ("avatar", "description"):
        if isinstance(body.get(key), str):
            settings[key] = body[key]
    raw_datasets = body.get("dataset_ids") or []
    if not isinstance(raw_datasets, list):
        raise BadRequest("`dataset_ids` must be a list of strings")
    # RAGFlow drops empty entries.
    dataset_ids = [d for d in raw_datasets if d]
    if not all(isinstance(d, str) for d in dataset_ids):
        raise BadRequest("`dataset_ids` must be a list of strings")
    if dataset_ids:
        # The gateway has no knowledge bases: any dataset is one the caller does not own.
        raise DataError(f"You don't own the dataset {dataset_ids[0]}")
    if creating or "dataset_ids" in body:
        settings["dataset_ids"] = []
    llm = body.get("llm")
    if llm is not None:
        if not isinstance(llm, Mapping):
            raise BadRequest("`llm` must be an object")
        model = llm.get("model_name")
        if model is not None and (not isinstance(model, str) or not model):
            raise BadRequest("`model_name` must be a non-empty string")
        if model is not None and model not in known_models:
            raise DataError(f"`model_name` {model} doesn't exist")
        settings["llm"] = {k: v for k, v in llm.items() if v is not None or k == "model_name"}
    prompt = body.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, Mapping):
            raise BadRequest("`prompt` must be an object")
        settings["prompt"] = {k: v for k, v in prompt.items() if v is not None}
    return settings


def assistant_body(
    assistant_id: str,
    user_id: str,
    name: str,
    config: Mapping[str, Any],
    created_ms: int,
    updated_ms: int,
) -> dict[str, Any]:
    """An assistant as RAGFlow shows it (`data` of create and list)."""
    prompt = dict(config["prompt"])
    return {
        "id": assistant_id,
        "name": name,
        "avatar": config.get("avatar", ""),
        "description": config.get("description", DEFAULT_DESCRIPTION),
        "dataset_ids": list(config.get("dataset_ids", [])),
        "language": "English",
        "llm": dict(config["llm"]),
        "prompt": prompt,
        "prompt_type": "simple",
        "do_refer": "1",
        "status": "1",
        "tenant_id": user_id,
        "top_k": prompt.get("top_k", PROMPT_DEFAULTS["top_k"]),
        "create_time": created_ms,
        "create_date": http_date(created_ms),
        "update_time": updated_ms,
        "update_date": http_date(updated_ms),
    }


# -- sessions ----------------------------------------------------------------------
def session_body(
    session_id: str,
    assistant_id: str,
    name: str,
    messages: list[dict[str, Any]],
    created_ms: int,
    updated_ms: int,
    user_id: str = "",
) -> dict[str, Any]:
    return {
        "id": session_id,
        "chat_id": assistant_id,
        "name": name,
        "messages": messages,
        "user_id": user_id,
        "create_time": created_ms,
        "create_date": http_date(created_ms),
        "update_time": updated_ms,
        "update_date": http_date(updated_ms),
    }


def session_messages(opener: str, path: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a session's `messages` shows: the opener, then the conversation so far."""
    shown: list[dict[str, Any]] = [{"role": "assistant", "content": opener}]
    for message in path:
        if message.get("role") not in ("user", "assistant"):
            continue
        item: dict[str, Any] = {
            "role": message["role"],
            "content": message.get("content") or "",
            "id": message["id"],
        }
        stamp = message.get("timestamp")
        is_number = isinstance(stamp, int | float) and not isinstance(stamp, bool)
        if message["role"] == "assistant" and is_number:
            item["created_at"] = stamp
        shown.append(item)
    return shown


# -- asking ------------------------------------------------------------------------
def _answer_mode(body: Mapping[str, Any]) -> AnswerMode | None:
    mode = body.get("answer_mode")
    if mode is None:
        return None
    if mode == "cumulative" or mode == "delta":
        return "cumulative" if mode == "cumulative" else "delta"
    raise BadRequest("`answer_mode` must be 'cumulative' or 'delta'")


def decode_options(body: Any, *, ws: bool = False) -> tuple[bool, AnswerMode | None]:
    """`stream` and `answer_mode` of a question, checked before anything is done with it."""
    if not isinstance(body, Mapping):
        raise _bad("The message must be a JSON object", ws)
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean", ws)
    try:
        return stream, _answer_mode(body)
    except BadRequest as exc:
        raise _bad(exc.message, ws) from None


def decode_question(body: Any, assistant_id: str, *, ws: bool = False) -> Question:
    """`{question, stream, session_id, answer_mode?}` (HTTP, or the path WebSocket)."""
    stream, mode = decode_options(body, ws=ws)
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _missing("question", ws)
    session_id = body.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise _bad("`session_id` must be a string", ws)
    return Question(assistant_id, question, session_id or None, stream, mode)


def decode_ws_frame(text: str, path_assistant_id: str | None = None) -> Question | Resume:
    """A WebSocket text frame: `{"type": "chat", "chat_id", "question", ...}` on
    `/v1/ws/chat`, or `{"question", "session_id"?}` when the path names the chat;
    on both, `{"type": "resume", "message_id", "after", "session_id"?,
    "answer_mode"?}` (the gateway's own: the answer's chunks after the one
    numbered `after`)."""
    try:
        body = client_json(text)
    except ValueError as exc:
        raise _bad(f"Invalid JSON format: {exc}", True) from None
    if not isinstance(body, Mapping):
        raise _bad("The message must be a JSON object", True)
    if body.get("type") == "resume":
        resume = resume_of(body.get("after"), body.get("session_id"), body.get("message_id"))
        if resume is None:
            raise _bad('A resume needs "message_id" and "after" (a seq, -1 or more)', True)
        try:
            mode = _answer_mode(body)
        except BadRequest as exc:
            raise _bad(exc.message, True) from None
        return replace(resume, answer_mode=mode)
    assistant_id = path_assistant_id
    if assistant_id is None:
        if body.get("type", "chat") != "chat":
            shown = repr(body.get("type"))[:60]  # what the client sent, not all of it
            raise _bad(f"Unknown message type {shown}; only 'chat' is supported", True)
        assistant_id = body.get("chat_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise _missing("chat_id", True)
    return decode_question(body, assistant_id, ws=True)


def _bad(message: str, ws: bool) -> ProtocolError:
    code = BAD_REQUEST if ws else ARGUMENT_ERROR
    return ProtocolError(message, error_frame(code, message))


def _missing(field: str, ws: bool) -> ProtocolError:
    message = f"Missing required parameter: {field}"
    return ProtocolError(message, error_frame(ARGUMENT_ERROR, message))


def error_frame(
    code: int, message: str, message_id: str | None = None, session_id: str | None = None
) -> str:
    """An error chunk, the shape RAGFlow streams (and sends before closing a socket).
    An answer's failure also names the answer and its session, as its chunks do
    (the gateway's addition: with two questions in flight on one socket, or a
    first question whose new session the failure is the only word of, the client
    can tell which)."""
    data: dict[str, Any] = {"answer": f"**ERROR**: {message}", "reference": []}
    if message_id is not None and session_id is not None:
        data |= {"id": message_id, "session_id": session_id}
    return jsonwire.dumps({"code": code, "message": message, "data": data})


STOPPED = "The answer was stopped before its end"


def stopped_frame(message_id: str, session_id: str) -> str:
    """An answer stopped before its end, told as a failure (streamed or not)."""
    return error_frame(SERVER_ERROR, STOPPED, message_id, session_id)


def failure_frame(error: GatewayError) -> str:
    """The frame for a question that failed (on a socket: the connection stays open,
    unless it is our fault: then code 500 and the socket is closed 1011)."""
    if isinstance(error, ProtocolError) and isinstance(error.frame, str):
        return error.frame
    code = SERVER_ERROR if isinstance(error, ServerError) else code_for(error)
    return error_frame(code, error.message)


def answer_data(answer: str, message_id: str | None, session_id: str) -> dict[str, Any]:
    """The `data` of an answer chunk (and of a non-streamed answer)."""
    return {
        "answer": answer,
        "reference": {},
        "audio_binary": None,
        "id": message_id,
        "session_id": session_id,
    }


def chunk(answer: str, message_id: str | None, session_id: str, **extra: Any) -> str:
    data = {**answer_data(answer, message_id, session_id), **extra}
    return jsonwire.dumps({"code": SUCCESS, "message": "", "data": data})


def delta_chunk(answer: str, message_id: str, session_id: str, tail: str = "") -> str:
    """`chunk(answer, message_id, session_id, **extra)` with `extra` already written as
    JSON members in `tail` (`,"final":false,"seq":7`): the same text, byte for byte
    (`tests/flavours/test_spliced_frames.py`), spliced, not a dict and `json.dumps`
    of it for each delta of every reply."""
    return (
        f'{{"code":{SUCCESS},"message":"","data":{{"answer":{jsonwire.string(answer)},'
        f'"reference":{{}},"audio_binary":null,"id":{jsonwire.string(message_id)},'
        f'"session_id":{jsonwire.string(session_id)}{tail}}}}}'
    )


def opener_frames(opener: str, session_id: str) -> list[str]:
    """RAGFlow ≤ 0.23 answers a question sent without a session with the new
    session's opener only (and its id)."""
    return [chunk(opener, None, session_id), END]


@dataclass(slots=True)
class _Answer:
    mode: AnswerMode
    stream: bool
    parts: list[str]


class AnswerEncoder:
    """A connection's (or a response's) answers as RAGFlow chunks.

    `mode` is the default; `expect()` sets one answer's own mode, or asks for
    it whole (`stream=False`: one chunk with the whole answer, at the end).
    """

    def __init__(self, mode: AnswerMode, seq: bool = False) -> None:
        self.mode = mode
        # With `seq` (a socket opened with `?seq=1`), each answer chunk's `data` also
        # carries the event's `seq`, what a `resume` frame names.
        self._seq = seq
        self._answers: dict[str, _Answer] = {}

    def _numbered(self, event: Event) -> dict[str, Any]:
        return {"seq": event.seq} if self._seq and isinstance(event, ReplyEvent) else {}

    def expect(self, message_id: str, mode: AnswerMode | None = None, stream: bool = True) -> None:
        self._answers[message_id] = _Answer(mode or self.mode, stream, [])

    def _answer(self, message_id: str) -> _Answer:
        answer = self._answers.get(message_id)
        if answer is None:
            answer = self._answers[message_id] = _Answer(self.mode, True, [])
        return answer

    def encode(self, event: Event) -> list[str]:
        if isinstance(event, TextDelta) and event.chat_id is not None:
            answer = self._answer(event.message_id)
            answer.parts.append(event.text)
            if not answer.stream:
                return []
            numbered = f',"seq":{event.seq}' if self._seq else ""
            if answer.mode == "delta":
                tail = ',"final":false' + numbered
                return [delta_chunk(event.text, event.message_id, event.chat_id, tail)]
            whole = "".join(answer.parts)
            return [delta_chunk(whole, event.message_id, event.chat_id, numbered)]
        if isinstance(event, ReplyFinished) and event.chat_id is not None:
            answer = self._answer(event.message_id)
            del self._answers[event.message_id]
            if event.cancelled:
                # Stopped before its end (its session deleted, the replica stopping):
                # RAGFlow has no "cancelled", and an end marker alone would pass
                # the partial text for the whole answer.
                return [stopped_frame(event.message_id, event.chat_id), END]
            seq = self._numbered(event)
            if not answer.stream:
                return [chunk(event.content, event.message_id, event.chat_id, **seq), END]
            if answer.mode == "delta":
                return [chunk("", event.message_id, event.chat_id, final=True, **seq), END]
            return [END]
        if isinstance(event, ReplyFailed) and event.chat_id is not None:
            self._answers.pop(event.message_id, None)
            return [error_frame(SERVER_ERROR, event.message, event.message_id, event.chat_id), END]
        if isinstance(event, ReplySnapshot) and event.chat_id is not None:
            # A resumed answer's text at once (it replaces what the client holds),
            # and what follows goes on from it.
            answer = self._answer(event.message_id)
            answer.parts = [event.content]
            seq = self._numbered(event)
            frames = [chunk(event.content, event.message_id, event.chat_id, snapshot=True, **seq)]
            if event.done:
                del self._answers[event.message_id]
                frames.append(END)
            return frames
        return []


class RagflowSocketFlavour:
    """The `Flavour` of a RAGFlow chat socket (`flavours/base.py`): text frames both ways.

    `path_assistant_id` is set when the path names the assistant
    (`/api/v1/ws/chats/{chat_id}/…`); `mode` is the answers' default.
    """

    def __init__(self, mode: AnswerMode, path_assistant_id: str | None = None) -> None:
        self.mode: AnswerMode = mode
        self.path_assistant_id = path_assistant_id

    def decode(self, frame: str) -> Question | Resume:
        return decode_ws_frame(frame, self.path_assistant_id)

    def encoder(self, request: Command | None = None) -> AnswerEncoder:
        return AnswerEncoder(self.mode)


class RagflowHttpFlavour:
    """The `Flavour` of `POST /api/v1/chats/{chat_id}/completions`: a JSON body in,
    chunks out (`sse` frames each); the question's own `answer_mode` wins."""

    def __init__(self, assistant_id: str, mode: AnswerMode) -> None:
        self.assistant_id = assistant_id
        self.mode: AnswerMode = mode

    def decode(self, frame: Any) -> Question:
        return decode_question(frame, self.assistant_id)

    def encoder(self, request: Command | None = None) -> AnswerEncoder:
        own = request.answer_mode if isinstance(request, Question) else None
        return AnswerEncoder(own or self.mode)


def sse(frame: str) -> bytes:
    """RAGFlow writes `data:` with no space."""
    return b"data:" + frame.encode() + b"\n\n"


# -- /v1/ws/health -----------------------------------------------------------------
HEALTHY = jsonwire.dumps(
    {"status": "healthy", "message": "WebSocket connection established", "version": "1.0"}
)


def echo(message: str, now: float) -> str:
    return jsonwire.dumps({"echo": message, "timestamp": str(now)})
