"""Fuzzing every client decoder with hypothesis: generated, almost-right and mutated inputs.

For any input, each pure decoder either returns a valid command (or value) or raises
its documented error, answered in the client's protocol:

    decoder                                   documented error, and how the client sees it
    nadoo.NadooFlavour(socket).decode         ProtocolError, .frame Nadoo's error frame
    nadoo.debug_answer                        never raises: pong, or its error frame
    ragflow.decode_ws_frame                   ProtocolError, .frame RAGFlow's error chunk (400/101)
    ragflow.decode_question, decode_assistant PeerError, rendered by `ragflow.error_body`
    openai.decode_request                     BadRequest, rendered by `openai.error_for`
    openwebui.decode_completion_request       BadRequest, rendered as `{"detail"}`
    openwebui.OpenWebUIFlavour().decode       ProtocolError without a frame (no ack)
    mirror.after_of, mirror.cursor_of         never raise: None for what is not a seq/cursor
    text.client_json                          ValueError; never a NUL or a lone surrogate out
    chat.tree.normalize                       TreeError

never a KeyError, TypeError, AttributeError, RecursionError or UnicodeError.  Inputs:
any JSON value (huge numbers, NaN, surrogates, NUL), valid frames with a few of the
decoder's own fields dropped or holding wrong types, JSON text cut, spliced,
re-encoded as bytes and decoded as latin-1 or with surrogateescape, escapes like
\\ud800 and \\u0000, very long strings and numbers, nesting 10 to 100,000 deep.  The
REST bodies go both ways: as parsed values, and as text through `client_json`, as a
route reads them.

Each crash this fuzzing found (seven, all fixed) has its own test at the end, with
the smallest input that showed it.  The module prints how many inputs each decoder
was tried with.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import jsonwire
from gateway.chat import tree
from gateway.commands import (
    MAX_RESUMED,
    Ask,
    Authenticate,
    Broadcast,
    Cancel,
    ChatSignal,
    Ping,
    Question,
    ReplyTarget,
    Resume,
    Say,
    Typing,
)
from gateway.errors import BadRequest, GatewayError, PeerError, ProtocolError
from gateway.flavours import mirror, nadoo, openai, openwebui, ragflow
from gateway.text import client_json, storable

EXAMPLES = 500
NOW = 1729768709.5

TRIED: Counter[str] = Counter()  # inputs each decoder was given
REFUSED: Counter[str] = Counter()  # of those, bodies `client_json` refused before the decoder

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture(scope="module", autouse=True)
def inputs_tried() -> Iterator[None]:
    yield
    print("\nfuzz: inputs tried per decoder")
    for name in sorted(TRIED):
        notes = [f"{REFUSED[name]} not JSON, refused first"] if REFUSED[name] else []
        print(f"  {name}: {TRIED[name]} inputs tried" + (f" ({'; '.join(notes)})" if notes else ""))
    print(f"  total: {sum(TRIED.values())} inputs tried")
    short = {name: count for name, count in TRIED.items() if count < EXAMPLES}
    assert not short, f"decoders tried with fewer than {EXAMPLES} inputs: {short}"


# -- strategies ----------------------------------------------------------------------
CHARS = (
    st.characters()
    | st.characters(codec=None, categories=["Cs"])  # lone surrogates
    | st.sampled_from(["\x00", "\u2028", "\ufeff", "\uffff", "²", '"', "\\"])
)
WORDS = ["", " ", "\x00", "\ud800", "\udfff", "ping", "chat", "resume", "m1", "c1", "²", "-1"]
TEXTS = st.text(CHARS, max_size=12) | st.sampled_from(WORDS)
# Huge values are made, not written: a strategy's repr holds its literals, and
# hypothesis refuses (a warning, an error here) to build one of many kilobytes.
POWERS = st.sampled_from([40, 400, 4000])
INTS = st.integers() | st.sampled_from([-2, -1, 0, 1, 2**53, 2**63])
INTS |= POWERS.map(lambda power: 10**power) | POWERS.map(lambda power: -(10**power))
DIGITS = st.tuples(st.sampled_from("910"), st.sampled_from([20, 4301, 5000])).map(
    lambda pair: pair[0] * pair[1]
)
SCALARS = st.none() | st.booleans() | INTS | st.floats() | TEXTS
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXTS, kids, max_size=4),
    max_leaves=12,
)
WRONG = JSON_VALUES | st.sampled_from([[], {}, [[]], [{}], {"m1": True}, math.nan, 1.0, True])


@st.composite
def almost(
    draw: st.DrawFn, valid: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """`valid` with up to three of `fields` dropped, set to a value it expects, or to any other."""
    value = dict(valid)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        how = draw(st.sampled_from(["drop", "expected", "expected", "wrong"]))
        if how == "drop":
            value.pop(name, None)
        else:
            value[name] = draw(fields[name] if how == "expected" else WRONG)
    return value


def kinds(*names: str) -> st.SearchStrategy[str]:
    return st.sampled_from([*names, "unknown", "", "PING", "\ud800"])


ESCAPES = ["\\ud800", "\\udfff", "\\u0000", "\\ud83d\\ude00", "\\u12", "\\x41", "\\", "\x00"]
INSERTS = st.sampled_from([*ESCAPES, *'"{[]},:', "NaN", "-Infinity", "1e999999", "\ud800"])
INSERTS |= st.text(CHARS, max_size=4) | DIGITS


@st.composite
def mutated(draw: st.DrawFn, objects: st.SearchStrategy[Any]) -> str:
    """An object's JSON text, cut, spliced, or with its bytes damaged."""
    text = draw(st.sampled_from([jsonwire.dumps, json.dumps]))(draw(objects))
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "insert", "drop", "long", "bytes"]))
    if how == "cut":
        return text[:at]
    if how == "insert":
        return text[:at] + draw(INSERTS) + text[at:]
    if how == "drop":
        return text[:at] + text[at + 1 :]
    if how == "long":
        return text[:at] + draw(st.sampled_from("a9 ")) * draw(st.integers(1, 300_000)) + text[at:]
    raw = text.encode("utf-8", "surrogatepass")
    raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + 1 :]
    return raw.decode(*draw(st.sampled_from([("latin-1",), ("utf-8", "surrogateescape")])))


NEST_PREFIXES = [
    *("", '{"type":"chat","content":', '{"type":"member_added","x":', '{"question":"q","x":'),
    *('{"type":"resume","message_id":"m","after":', '{"messages":{"m":{"x":'),
]


@st.composite
def nested(draw: st.DrawFn) -> str:
    """JSON text nested 10 to 100,000 deep, closed or not, inside a decoder's frame."""
    depth = draw(st.sampled_from([10, 498, 600, 990, 1000, 100_000]) | st.integers(10, 100_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"type":', "}")]))
    prefix = draw(st.sampled_from(NEST_PREFIXES))
    inner = draw(st.sampled_from(["1", '"x"', "[]", "{}", "", '"\\ud800"']))
    closed = draw(st.booleans())
    tail = closer * depth + "}" * prefix.count("{") if closed else ""
    return prefix + opener * depth + inner + tail


def frames_of(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """Text frames: the objects as JSON (raw and \\u-escaped), mutated, nested, or noise."""
    return st.one_of(
        objects.map(jsonwire.dumps),
        objects.map(json.dumps),
        mutated(objects),
        nested(),
        st.text(CHARS),
        st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape")),
        st.binary().map(lambda raw: raw.decode("latin-1")),
    )


NOT_JSON = object()  # a body `client_json` refused: the route's 400, the decoder never sees it


def _read(text: str) -> Any:
    try:
        return client_json(text)
    except ValueError:
        return NOT_JSON


def bodies(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Parsed bodies: almost-right objects, any JSON value, or text as a route reads it."""
    return st.one_of(objects, objects, JSON_VALUES, frames_of(objects).map(_read))


# -- the contract ----------------------------------------------------------------------
def attempt(
    name: str, call: Callable[[], Any], errors: tuple[type[Exception], ...] = (GatewayError,)
) -> Any:
    """The decoder's value, or the documented error it raised (returned); any other
    exception fails the test."""
    TRIED[name] += 1
    try:
        return call()
    except errors as exc:
        return exc


def check_nadoo_frame(exc: BaseException) -> None:
    assert isinstance(exc, ProtocolError) and isinstance(exc.frame, str)
    exc.frame.encode("utf-8")
    frame = json.loads(exc.frame)
    assert list(frame) == ["type", "message", "code", "data", "timestamp"]
    assert frame["type"] == "error" and frame["message"] == exc.message
    assert isinstance(frame["code"], str) and frame["code"]
    assert frame["data"] == {"message": exc.message, "code": frame["code"]}
    assert frame["timestamp"] == nadoo.timestamp(NOW)


def check_ragflow_frame(exc: BaseException, codes: tuple[int, ...]) -> None:
    assert isinstance(exc, ProtocolError) and isinstance(exc.frame, str)
    exc.frame.encode("utf-8")
    frame = json.loads(exc.frame)
    assert frame.pop("code") in codes
    assert frame == {
        "message": exc.message,
        "data": {"answer": f"**ERROR**: {exc.message}", "reference": []},
    }


def check_http_error(exc: BaseException, body: dict[str, Any]) -> None:
    """A client's fault, rendered as JSON (aiohttp's `json_response` escapes non-ASCII)."""
    assert isinstance(exc, PeerError), exc
    assert isinstance(exc.message, str) and exc.message
    json.dumps(body).encode("utf-8")


def check_resume(resume: Resume) -> None:
    assert isinstance(resume, Resume) and 1 <= len(resume.after) <= MAX_RESUMED
    for message_id, seq in resume.after:
        assert isinstance(message_id, str) and message_id
        assert type(seq) is int and seq >= -1
    assert optional_id(resume.chat_id)
    assert resume.answer_mode in (None, *ragflow.ANSWER_MODES)


def optional_id(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def unstorable_strings(value: Any) -> list[str]:
    """Every string (keys too) holding NUL or a lone surrogate; a loop, not recursion."""
    found, todo = [], [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            found += [item] if storable(item) != item else []
        elif isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            todo += item
    return found


# -- Nadoo --------------------------------------------------------------------------
NADOO_FIELDS = {
    "type": kinds("chat", "message", "ping", "typing", "cancel", "resume", "member_added"),
    "content": TEXTS,
    "message": TEXTS,
    "chat_id": TEXTS,
    "application_id": TEXTS,
    "message_id": TEXTS,
    "after": INTS,
    "timestamp": TEXTS,
}
NADOO_FRAMES = frames_of(
    almost({"type": "chat", "content": "hi", "chat_id": "c1"}, NADOO_FIELDS)
    | almost({"type": "resume", "message_id": "m1", "after": 3}, NADOO_FIELDS)
    | almost({"type": "document_updated", "document_id": "d1"}, NADOO_FIELDS)
    | almost({"type": "ping"}, NADOO_FIELDS)
)


@pytest.mark.parametrize("socket", ["chat", "workspace", "notifications"])
@fuzz
@given(text=NADOO_FRAMES)
def test_nadoo_sockets(socket: nadoo.Socket, text: str) -> None:
    flavour = nadoo.NadooFlavour(socket, "conn-a", clock=lambda: NOW)
    got = attempt(f"nadoo.decode_{socket}", lambda: flavour.decode(text))
    if isinstance(got, GatewayError):
        check_nadoo_frame(got)
    elif isinstance(got, Say):
        assert isinstance(got.text, str) and got.text.strip()
        assert optional_id(got.chat_id) and optional_id(got.model)
    elif isinstance(got, Resume):
        check_resume(got)
    elif isinstance(got, Broadcast):
        assert socket == "workspace" and got.type in nadoo.WORKSPACE_EVENTS
        assert isinstance(got.data, dict) and not {"type", "timestamp"} & got.data.keys()
    else:
        assert isinstance(got, Ping | Typing | Cancel) and (socket == "chat" or got == Ping())


@fuzz
@given(
    text=frames_of(almost({"type": "ping"}, {"type": kinds("ping", "pong")}))
    | st.sampled_from(["ping", " ping\n", "PING"])
)
def test_nadoo_debug_answer(text: str) -> None:
    got = attempt("nadoo.debug_answer", lambda: nadoo.debug_answer(text), ())
    refused = nadoo.debug_error("This socket only answers 'ping'")
    assert got in ("pong", '{"type":"pong"}', refused)


# -- RAGFlow ------------------------------------------------------------------------
QUESTION_FIELDS = {
    "question": TEXTS,
    "stream": st.booleans(),
    "session_id": TEXTS,
    "answer_mode": st.sampled_from(ragflow.ANSWER_MODES),
}
RAGFLOW_FIELDS = {
    **QUESTION_FIELDS,
    "type": kinds("chat", "resume"),
    "chat_id": TEXTS,
    "message_id": TEXTS,
    "after": INTS | st.dictionaries(TEXTS, INTS, max_size=3),
}
QUESTION = {"question": "hi", "session_id": "s1", "stream": True}


def check_question(question: Question) -> None:
    assert isinstance(question, Question)
    assert isinstance(question.assistant_id, str) and question.assistant_id
    assert isinstance(question.question, str) and question.question.strip()
    assert optional_id(question.session_id) and isinstance(question.stream, bool)
    assert question.answer_mode in (None, *ragflow.ANSWER_MODES)


@pytest.mark.parametrize("path_assistant_id", [None, "as1"])
@fuzz
@given(
    text=frames_of(
        almost({"type": "chat", "chat_id": "as1", **QUESTION}, RAGFLOW_FIELDS)
        | almost({"type": "resume", "message_id": "m1", "after": 3}, RAGFLOW_FIELDS)
    )
)
def test_ragflow_ws_frames(path_assistant_id: str | None, text: str) -> None:
    name = "ragflow.decode_ws_frame" + ("" if path_assistant_id is None else "[path]")
    flavour = ragflow.RagflowSocketFlavour("cumulative", path_assistant_id)
    got = attempt(name, lambda: flavour.decode(text))
    if isinstance(got, GatewayError):
        check_ragflow_frame(got, (ragflow.BAD_REQUEST, ragflow.ARGUMENT_ERROR))
    elif isinstance(got, Resume):
        check_resume(got)
    else:
        check_question(got)


@fuzz
@given(body=bodies(almost(QUESTION, QUESTION_FIELDS)))
def test_ragflow_http_question(body: Any) -> None:
    name = "ragflow.decode_question"
    if body is NOT_JSON:
        REFUSED[name] += 1
    flavour = ragflow.RagflowHttpFlavour("as1", "delta")
    got = attempt(name, lambda: body is NOT_JSON or flavour.decode(body))
    if isinstance(got, GatewayError):
        check_ragflow_frame(got, (ragflow.ARGUMENT_ERROR,))
        check_http_error(got, ragflow.error_body(got))
    elif got is not True:
        check_question(got)


ASSISTANT = almost(
    {"name": "a", "dataset_ids": [], "llm": {"model_name": "m"}, "prompt": {"top_k": 3}},
    {
        "name": TEXTS,
        "avatar": TEXTS,
        "description": TEXTS,
        "dataset_ids": st.lists(TEXTS | WRONG, max_size=3),
        "llm": almost({"model_name": "m"}, {"model_name": TEXTS, "temperature": INTS}),
        "prompt": almost({"top_k": 3}, {"top_k": INTS, "prompt": TEXTS}),
    },
)


@pytest.mark.parametrize("creating", [True, False])
@fuzz
@given(body=bodies(ASSISTANT))
def test_ragflow_assistant_bodies(creating: bool, body: Any) -> None:
    name = f"ragflow.decode_assistant[{'create' if creating else 'update'}]"
    if body is NOT_JSON:
        REFUSED[name] += 1
    got = attempt(
        name,
        lambda: (
            body is NOT_JSON
            or ragflow.decode_assistant(body, creating=creating, known_models=["m"])
        ),
    )
    if isinstance(got, GatewayError):
        check_http_error(got, ragflow.error_body(got))
        assert ragflow.code_for(got) in (ragflow.ARGUMENT_ERROR, ragflow.DATA_ERROR)
    elif got is not True:
        assert set(got) <= {"name", "avatar", "description", "dataset_ids", "llm", "prompt"}
        assert not creating or (got["name"] and got["dataset_ids"] == [])


# -- OpenAI and Open WebUI's completions ----------------------------------------------
MESSAGE = {"role": "user", "content": "hi"}
MESSAGES = st.lists(
    almost(
        MESSAGE,
        {
            "role": st.sampled_from([*sorted(openai.ROLES), "bot"]),
            "content": TEXTS
            | st.lists(
                almost({"type": "text", "text": "hi"}, {"type": TEXTS, "text": TEXTS}), max_size=2
            ),
            "name": TEXTS,
        },
    ),
    max_size=3,
)
PARAMS = {param: WRONG for param in ("temperature", "stop", "seed", "logit_bias", "user")}
OPENAI_FIELDS = {
    "model": TEXTS,
    "messages": MESSAGES,
    "stream": st.booleans(),
    "stream_options": almost({"include_usage": True}, {"include_usage": st.booleans()}),
    "n": INTS,
    **PARAMS,
}
OPENAI = {"model": "m", "messages": [MESSAGE], "stream": True}
OPENWEBUI = almost(
    {**OPENAI, "chat_id": "c1", "id": "a1", "session_id": "s1", "parent_id": "u1"},
    {
        **OPENAI_FIELDS,
        "chat_id": st.sampled_from(["c1", "temporary:x", "local:y", ""]),
        "id": TEXTS,
        "session_id": TEXTS,
        "parent_id": TEXTS,
        "user_message": almost({"id": "u1", "content": "hi"}, {"id": TEXTS}),
        "message_ids": st.lists(
            almost(
                {"model_id": "m", "message_id": "a1", "modelIdx": 0},
                {"model_id": TEXTS, "message_id": TEXTS, "modelIdx": INTS},
            ),
            max_size=3,
        ),
        "params": almost({"temperature": 0.5}, PARAMS),
        "background_tasks": almost(
            {"title_generation": True},
            {task: st.booleans() for task in openwebui.BACKGROUND_TASKS},
        ),
    },
)


def check_ask(ask: Ask) -> None:
    assert isinstance(ask, Ask)
    assert isinstance(ask.model, str) and ask.model and isinstance(ask.stream, bool)
    assert isinstance(ask.messages, list) and isinstance(ask.params, dict)
    for message in ask.messages:
        assert isinstance(message, dict) and message["role"] in openai.ROLES
    for target in ask.targets:
        assert isinstance(target, ReplyTarget) and isinstance(target.message_id, str)
        assert isinstance(target.model, str)


@fuzz
@given(body=bodies(almost(OPENAI, OPENAI_FIELDS)))
def test_openai_bodies(body: Any) -> None:
    name = "openai.decode_request"
    if body is NOT_JSON:
        REFUSED[name] += 1
    flavour = openai.OpenAIFlavour(clock=lambda: NOW)
    got = attempt(name, lambda: body is NOT_JSON or flavour.decode(body))
    if isinstance(got, GatewayError):
        check_http_error(got, openai.error_for(got))
        assert isinstance(got, BadRequest) and got.openai_type == "invalid_request_error"
    elif got is not True:
        check_ask(got)
        assert got.messages


@fuzz
@given(body=bodies(OPENWEBUI))
def test_openwebui_completion_bodies(body: Any) -> None:
    name = "openwebui.decode_completion_request"
    if body is NOT_JSON:
        REFUSED[name] += 1
    got = attempt(name, lambda: body is NOT_JSON or openwebui.decode_completion_request(body))
    if isinstance(got, GatewayError):
        check_http_error(got, {"detail": got.message})
        assert isinstance(got, BadRequest)
    elif got is not True:
        check_ask(got)
    parsed = None if body is NOT_JSON else body
    assert isinstance(openwebui.is_stored_request(parsed), bool)
    assert openwebui.background_tasks(parsed) <= set(openwebui.BACKGROUND_TASKS)


# -- Open WebUI's Socket.IO events ---------------------------------------------------
SIGNAL_FIELDS = {
    "type": kinds("join", "leave", "typing", "last_read_at", "resume"),
    "after": st.dictionaries(TEXTS, INTS | WRONG, max_size=40),
}
SOCKET_EVENTS = st.tuples(
    st.sampled_from(["user-join", "events:chat", "events", ""]) | TEXTS,
    st.one_of(
        almost({"auth": {"token": "t0k"}}, {"auth": almost({"token": "t0k"}, {"token": TEXTS})}),
        almost(
            {"chat_id": "c1", "data": {"type": "join"}},
            {"chat_id": TEXTS, "data": almost({"type": "join"}, SIGNAL_FIELDS)},
        ),
        almost(
            {"chat_id": "c1", "data": {"type": "resume", "after": {"m1": 3}}},
            {"chat_id": TEXTS, "data": almost({"type": "resume", "after": {}}, SIGNAL_FIELDS)},
        ),
        JSON_VALUES,
        # What python-socketio parsed from a packet's JSON.
        frames_of(JSON_VALUES).map(_read).map(lambda data: None if data is NOT_JSON else data),
    ),
)


@fuzz
@given(frame=SOCKET_EVENTS)
def test_openwebui_socket_events(frame: tuple[str, Any]) -> None:
    flavour = openwebui.OpenWebUIFlavour()
    got = attempt("openwebui.OpenWebUIFlavour.decode", lambda: flavour.decode(frame))
    if isinstance(got, GatewayError):
        # Refused events are answered with no ack: the error carries no frame.
        assert isinstance(got, ProtocolError) and got.frame is None
    elif isinstance(got, Authenticate):
        assert frame[0] == "user-join" and isinstance(got.token, str) and got.token
    elif isinstance(got, ChatSignal):
        assert isinstance(got.chat_id, str) and isinstance(got.type, str)
    else:
        check_resume(got)


# -- SSE resumption: Last-Event-ID --------------------------------------------------
SEQS = st.integers(-1, 2**60) | INTS
# aiohttp decodes a header's bytes as UTF-8 with surrogateescape: b"\xff" is "\udcff".
LAST_EVENT_IDS = st.one_of(
    TEXTS,
    st.text(st.sampled_from("0123456789az-.%2E _+²٣１\udcff"), max_size=30),
    st.sampled_from(["0", " 7 ", "-1", "²", "٣", "１"]) | DIGITS,
    st.integers(-(2**70), 2**70).map(str),
    st.binary(max_size=30).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    # <ms>.<seq>-<message id>...: decimal digits are base-36 digits too.
    st.tuples(SEQS, st.lists(st.tuples(SEQS, TEXTS), max_size=20)).map(
        lambda cursor: ".".join([str(cursor[0]), *(f"{seq}-{mid}" for seq, mid in cursor[1])])
    ),
)


def written_cursor(last_event_id: str) -> mirror.Cursor | None:
    """The cursor of a Last-Event-ID, its id written as the stream's next event writes it."""
    cursor = mirror.cursor_of(last_event_id)
    if cursor is not None:
        cursor.id().encode("utf-8")
    return cursor


@fuzz
@given(last_event_id=LAST_EVENT_IDS)
def test_mirror_last_event_ids(last_event_id: str) -> None:
    after = attempt("mirror.after_of", lambda: mirror.after_of(last_event_id), ())
    assert after is None or (type(after) is int and 0 <= after < 2**53)
    cursor = attempt("mirror.cursor_of", lambda: written_cursor(last_event_id), ())
    if cursor is not None:
        assert 0 <= cursor.ms < mirror.MAX_NUMBER and len(cursor.seqs) <= mirror.MAX_CURSOR_REPLIES
        assert all(
            isinstance(mid, str) and -1 <= seq < mirror.MAX_NUMBER
            for mid, seq in cursor.seqs.items()
        )


# -- JSON from a client, and a chat's history ------------------------------------------
ENCODINGS = ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
RAW_BODIES = st.one_of(
    frames_of(JSON_VALUES),
    st.tuples(frames_of(JSON_VALUES), st.sampled_from(ENCODINGS)).map(
        lambda pair: pair[0].encode(pair[1], "surrogatepass")
    ),
    st.binary(),
)


@fuzz
@given(raw=RAW_BODIES)
def test_client_json(raw: str | bytes) -> None:
    got = attempt("text.client_json", lambda: client_json(raw), (ValueError,))
    if isinstance(got, ValueError):
        return
    # A str holding a lone surrogate as such (not escaped) is outside the contract: a str
    # decoded from UTF-8 (every WebSocket text frame) holds none (`text.py`).
    if isinstance(raw, str) and raw != storable(raw):
        return
    bad = unstorable_strings(got)
    assert not bad, f"client_json({raw!r}) returned unstorable strings {bad[:3]!r}"


MESSAGE_IDS = st.sampled_from(["m1", "m2", "m3", "", "\ud800"])
TREE_MESSAGE = {
    "id": MESSAGE_IDS,
    "parentId": MESSAGE_IDS | st.none(),
    "childrenIds": st.lists(MESSAGE_IDS | WRONG, min_size=1, max_size=3),
    "role": st.sampled_from(["user", "assistant"]),
    "content": TEXTS,
}
HISTORY = almost(
    {
        "messages": {
            "m1": {"id": "m1", "parentId": None, "childrenIds": ["m2"], "role": "user"},
            "m2": {"id": "m2", "parentId": "m1", "childrenIds": [], "role": "assistant"},
        },
        "currentId": "m2",
    },
    {
        "messages": st.dictionaries(
            MESSAGE_IDS,
            almost({"id": "m1", "parentId": None, "childrenIds": []}, TREE_MESSAGE),
            min_size=1,
            max_size=4,
        ),
        "currentId": MESSAGE_IDS,
        "current_id": MESSAGE_IDS,
    },
)


@fuzz
@given(body=bodies(HISTORY))
def test_tree_normalize(body: Any) -> None:
    if body is NOT_JSON:
        REFUSED["tree.normalize"] += 1
    # A chat's history is an object (`chat/chats.py` checks); any other value is its messages.
    history = body if isinstance(body, dict) else {"messages": body}
    got = attempt(
        "tree.normalize", lambda: body is NOT_JSON or tree.normalize(history), (tree.TreeError,)
    )
    if isinstance(got, tree.TreeError) or got is True:
        return
    messages, current = got["messages"], got["currentId"]
    assert current is None or current in messages
    for mid, message in messages.items():
        assert message["id"] == mid and all(isinstance(c, str) for c in message["childrenIds"])


# -- crashes found by the fuzzing above: each fails until its bug is fixed ----------
def raised(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_found_debug_answer_on_deep_nesting() -> None:
    # gateway/flavours/nadoo.py, debug_answer: `json.loads(text)` under `except ValueError`;
    # json raises RecursionError past ~1,000 levels (the plugin-debug socket's text frame).
    exc = raised(lambda: nadoo.debug_answer("[" * 1000))
    assert exc is None, f"CRASH: nadoo.debug_answer('[' * 1000) raised {exc!r}, not an error frame"


def test_found_decode_messages_on_unhashable_role() -> None:
    # gateway/flavours/openai.py, decode_messages: `message.get("role") not in ROLES` (a
    # frozenset) raises TypeError for a list or object role; /v1/chat/completions, Open
    # WebUI's /api/chat/completions and RAGFlow's OpenAI route answer 500, not 400.
    body = {"model": "m", "messages": [{"role": []}]}
    exc = raised(lambda: openai.decode_request(body))
    assert isinstance(exc, BadRequest), f"CRASH: openai.decode_request({body!r}) raised {exc!r}"


def test_found_normalize_on_unhashable_child_id() -> None:
    # gateway/chat/tree.py, normalize: `child in actual_set` raises TypeError for a list
    # or object in childrenIds (a chat body's history).
    history = {"messages": {"a": {"childrenIds": [[]]}}}
    exc = raised(lambda: tree.normalize(history))
    assert exc is None or isinstance(exc, tree.TreeError), (
        f"CRASH: tree.normalize({history!r}) raised {exc!r}"
    )


def test_found_normalize_on_deep_nesting() -> None:
    # gateway/chat/tree.py, normalize: `copy.deepcopy` recurses ~2 Python frames per level,
    # so a value nested ~500 deep, which client_json accepts in a chat body, raises
    # RecursionError.
    assert client_json("[" * 600 + "]" * 600) == nest(600)  # a body can hold it
    history = {"messages": {"a": {"x": nest(600)}}}
    exc = raised(lambda: tree.normalize(history))
    assert exc is None or isinstance(exc, tree.TreeError), (
        f"CRASH: tree.normalize({{'messages': {{'a': {{'x': <[] nested 600 deep>}}}}}}) raised {exc!r}"
    )


def test_found_after_of_on_non_decimal_digits() -> None:
    # gateway/flavours/mirror.py, after_of: `str.isdigit()` is true for "²" (and for
    # 4,301 digits), `int()` then raises ValueError; from `Last-Event-ID` or `?after=`.
    exc = raised(lambda: mirror.after_of("²"))
    assert exc is None, f"CRASH: mirror.after_of('²') raised {exc!r}, not None"


def test_found_cursor_of_keeps_unwritable_message_id() -> None:
    # gateway/flavours/mirror.py: cursor_of keeps a message id holding a lone surrogate
    # (the header `Last-Event-ID: 0.0-<byte 0xff>`, which aiohttp decodes to "0.0-\\udcff");
    # the stream's next `Cursor.id()` (`_id_part`: `quote`) raises UnicodeEncodeError.
    cursor = mirror.cursor_of("0.0-\udcff")
    exc = raised(lambda: cursor.id()) if cursor is not None else None
    assert exc is None, (
        f"CRASH: mirror.cursor_of('0.0-\\udcff').id() raised {exc!r}; the cursor should be None"
    )


def test_found_client_json_utf16_body_keeps_nul() -> None:
    # gateway/text.py, client_json: json.loads reads UTF-16 and UTF-32 bytes too, whose
    # "\\u0000" is not the bytes b"\\u", so the storable pass is skipped: a JSON body sent
    # as UTF-16 keeps NUL and lone surrogates.
    raw = '"\\u0000"'.encode("utf-16-le")
    value = client_json(raw)
    assert storable(value) == value, (
        f"CONTRACT: client_json({raw!r}) returned {value!r}, a string holding NUL"
    )
