"""Golden vectors for the RAGFlow codec: events in, exact chunks out; frames and bodies in,
questions and settings out; no event loop.

The vectors live in `tests/vectors/ragflow/`, two kinds of file::

    answers_<case>.json   {"description", "mode": <the encoder's default>,
                           "expect": [{"message_id", "mode", "stream"}, ...],   called first
                           "events": [{"event": "TextDelta", "chat_id", "message_id",
                                       "seq", "text"}, ...],
                           "frames": [{"code", "message", "data"}, ...]}
    <function>.json       {"description", "cases": [{"name", <input>, <expected> or "error"}]}

`<function>` is the codec function the cases feed; each case is its own test id.
Chunks are written in the vectors as objects, keys in the order the wire has
them: the codec sends compact JSON text (no spaces, non-ASCII as is), so each
is checked as that exact text and, parsed, as an object.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

import gateway.errors as errors
from gateway.commands import Question
from gateway.errors import GatewayError, ProtocolError
from gateway.flavours import ragflow
from gateway.flavours import ragflow_defaults as assistant_defaults
from gateway.flavours.sse import SSEParser
from tests.flavours.vectors import build_event

VECTOR_DIR = Path(__file__).parent.parent / "vectors" / "ragflow"
ANSWER_VECTORS = sorted(VECTOR_DIR.glob("answers_*.json"))
FUNCTIONS = (
    "decode_ws_frame",
    "decode_question",
    "decode_assistant",
    "assistant_config",
    "assistant_body",
    "session_body",
    "session_messages",
    "system_prompt",
    "model_params",
    "errors",
    "server_frames",
)

END = '{"code":0,"message":"","data":true}'
# Every streamed chunk's `data` (docs/PROTOCOLS.md §3); delta mode adds `final`.
CHUNK_KEYS = {"answer", "reference", "audio_binary", "id", "session_id"}

def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def wire(value: Any) -> str:
    """The exact text the codec must send for a chunk written in a vector."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def exact(value: Any) -> str:
    """JSON text for comparing parsed values: `true` is not `1`; key order is free."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def cases(name: str) -> list[Any]:
    listed = load(VECTOR_DIR / f"{name}.json")["cases"]
    names = [case["name"] for case in listed]
    assert len(names) == len(set(names)), f"{name}.json repeats a case name"
    return [pytest.param(case, id=case["name"]) for case in listed]



def build_error(spec: list[Any]) -> GatewayError:
    name, *args = spec
    kind = ragflow.DataError if name == "DataError" else getattr(errors, name)
    error: GatewayError = kind(*args)
    return error


def encoder_for(vector: dict[str, Any]) -> ragflow.AnswerEncoder:
    encoder = ragflow.AnswerEncoder(vector["mode"])
    for answer in vector["expect"]:
        encoder.expect(answer["message_id"], answer["mode"], answer["stream"])
    return encoder


def encode_each(vector: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """Each event spec with the chunks it produced, on one fresh encoder."""
    encoder = encoder_for(vector)
    return [(spec, encoder.encode(build_event(spec))) for spec in vector["events"]]


def encode_all(vector: dict[str, Any]) -> list[str]:
    return [text for _, frames in encode_each(vector) for text in frames]


def answer_mode(vector: dict[str, Any], message_id: str) -> tuple[str, bool]:
    """(mode, stream) of one answer, from the vector's own words."""
    for answer in vector["expect"]:
        if answer["message_id"] == message_id:
            return answer["mode"] or vector["mode"], answer["stream"]
    return vector["mode"], True


def test_every_vector_file_is_checked() -> None:
    # A file that matches no pattern would be silently skipped.
    expected = {path.name for path in ANSWER_VECTORS} | {f"{name}.json" for name in FUNCTIONS}
    assert {path.name for path in VECTOR_DIR.glob("*.json")} == expected


# -- AnswerEncoder ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ANSWER_VECTORS, ids=[p.stem for p in ANSWER_VECTORS])
def test_encoder_matches_golden_chunks(path: Path) -> None:
    vector = load(path)
    sent = encode_all(vector)
    assert sent == [wire(frame) for frame in vector["frames"]]
    assert exact([json.loads(text) for text in sent]) == exact(vector["frames"])


@pytest.mark.parametrize("path", ANSWER_VECTORS, ids=[p.stem for p in ANSWER_VECTORS])
def test_every_chunk_has_ragflows_shape(path: Path) -> None:
    # Independently of the golden chunks (docs/PROTOCOLS.md §3): an envelope; a chunk's
    # data is exactly CHUNK_KEYS (+ final when streamed in delta mode) for its own
    # message and session; a failure's data is {"answer": "**ERROR**: …", "reference": []}
    # and its answer's id and session_id;
    # every answer, finished or failed, ends with one end marker.
    vector = load(path)
    ends = 0
    for spec, frames in encode_each(vector):
        for text in frames:
            body = json.loads(text)
            assert list(body) == ["code", "message", "data"]
            if text == END:
                ends += 1
                continue
            data = body["data"]
            if body["code"] != 0:
                # A failure, or an answer stopped before its end (told as one).
                stopped = spec["event"] == "ReplyFinished" and spec.get("cancelled")
                assert spec["event"] == "ReplyFailed" or stopped
                message = ragflow.STOPPED if stopped else spec["message"]
                assert body == {
                    "code": 500,
                    "message": message,
                    "data": {
                        "answer": f"**ERROR**: {message}",
                        "reference": [],
                        "id": spec["message_id"],
                        "session_id": spec["chat_id"],
                    },
                }
                continue
            mode, stream = answer_mode(vector, spec["message_id"])
            with_final = mode == "delta" and stream
            assert set(data) == CHUNK_KEYS | ({"final"} if with_final else set())
            assert data["reference"] == {} and data["audio_binary"] is None
            assert (data["id"], data["session_id"]) == (spec["message_id"], spec["chat_id"])
        if spec["event"] in ("ReplyFinished", "ReplyFailed"):
            assert frames[-1] == END
    finished = [
        spec for spec in vector["events"] if spec["event"] in ("ReplyFinished", "ReplyFailed")
    ]
    assert ends == len(finished)


@pytest.mark.parametrize("path", ANSWER_VECTORS, ids=[p.stem for p in ANSWER_VECTORS])
def test_answers_rebuild_the_text(path: Path) -> None:
    # Cumulative: each answer extends the one before (what SDK examples slice with
    # `ans.content[len(cont):]`), the last is the whole text.  Delta: the answers
    # joined are the whole text.  Not streamed: one answer, the whole text.
    vector = load(path)
    answers: dict[str, list[str]] = {}
    for spec, frames in encode_each(vector):
        for text in frames:
            body = json.loads(text)
            data = body["data"]
            answered = body["code"] == 0 and isinstance(data, dict) and "id" in data
            if answered and not data.get("final"):
                answers.setdefault(data["id"], []).append(data["answer"])
        if spec["event"] != "ReplyFinished" or spec.get("cancelled"):
            continue
        sent = answers.pop(spec["message_id"], [])
        mode, stream = answer_mode(vector, spec["message_id"])
        if not stream:
            assert sent == [spec["content"]]
        elif mode == "cumulative":
            assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(sent))
            assert sent[-1] == spec["content"]
        else:
            assert "".join(sent) == spec["content"]


@pytest.mark.parametrize("path", ANSWER_VECTORS, ids=[p.stem for p in ANSWER_VECTORS])
def test_sse_frames_have_no_space_after_data(path: Path) -> None:
    sent = encode_all(load(path))
    framed = [ragflow.sse(text) for text in sent]
    for text, raw in zip(sent, framed, strict=True):
        assert raw == b"data:" + text.encode("utf-8") + b"\n\n"
    assert SSEParser().feed(b"".join(framed)) == sent


def test_sse_is_utf8_bytes() -> None:
    assert ragflow.sse('{"answer":"✓"}') == b'data:{"answer":"\xe2\x9c\x93"}\n\n'
    assert ragflow.sse(END) == b'data:{"code":0,"message":"","data":true}\n\n'


def test_end_marker() -> None:
    assert ragflow.END == END


# -- decoders ---------------------------------------------------------------------------
def sent_text(case: dict[str, Any]) -> str:
    if "text" in case:
        text: str = case["text"]
        return text
    return json.dumps(case["frame"], ensure_ascii=False)


def check_question(question: Question, expected: dict[str, Any]) -> None:
    # The RAGFlow question is a Command of the core (gateway/commands.py).
    assert question == Question(**expected)
    assert exact(dataclasses.asdict(question)) == exact(expected)


def check_protocol_error(raised: pytest.ExceptionInfo[ProtocolError], frame: Any) -> None:
    assert raised.value.frame == wire(frame)
    assert raised.value.message == frame["message"]
    # What a socket sends back is the frame the error carries.
    assert ragflow.failure_frame(raised.value) == wire(frame)


@pytest.mark.parametrize("case", cases("decode_ws_frame"))
def test_decode_ws_frame(case: dict[str, Any]) -> None:
    text = sent_text(case)
    path_assistant_id = case.get("path_assistant_id")
    flavour = ragflow.RagflowSocketFlavour("cumulative", path_assistant_id)
    if "error" in case:
        with pytest.raises(ProtocolError) as raised:
            ragflow.decode_ws_frame(text, path_assistant_id)
        check_protocol_error(raised, case["error"])
        with pytest.raises(ProtocolError) as raised:
            flavour.decode(text)
        check_protocol_error(raised, case["error"])
        return
    check_question(ragflow.decode_ws_frame(text, path_assistant_id), case["question"])
    check_question(flavour.decode(text), case["question"])


@pytest.mark.parametrize("case", cases("decode_question"))
def test_decode_question(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(ProtocolError) as raised:
            ragflow.decode_question(case["body"], case["assistant_id"])
        check_protocol_error(raised, case["error"])
        # Over HTTP it is an argument error like any other peer fault.
        assert ragflow.error_body(raised.value) == {
            "code": 101,
            "message": case["error"]["message"],
        }
        return
    check_question(ragflow.decode_question(case["body"], case["assistant_id"]), case["question"])
    flavour = ragflow.RagflowHttpFlavour(case["assistant_id"], "delta")
    check_question(flavour.decode(case["body"]), case["question"])


@pytest.mark.parametrize("case", cases("decode_assistant"))
def test_decode_assistant(case: dict[str, Any]) -> None:
    def decode() -> dict[str, Any]:
        return ragflow.decode_assistant(
            case["body"], creating=case["creating"], known_models=case["known_models"]
        )

    if "error" in case:
        expected = build_error(case["error"])
        with pytest.raises(GatewayError) as raised:
            decode()
        assert type(raised.value) is type(expected)
        assert raised.value.message == expected.message
        return
    assert exact(decode()) == exact(case["settings"])


# -- assistants and sessions ------------------------------------------------------------
@pytest.mark.parametrize("case", cases("assistant_config"))
def test_assistant_config(case: dict[str, Any]) -> None:
    config = assistant_defaults.assistant_config(case["settings"], case["model"])
    assert exact(config) == exact(case["config"])


@pytest.mark.parametrize("case", cases("assistant_body"))
def test_assistant_body(case: dict[str, Any]) -> None:
    body = ragflow.assistant_body(**case["args"])
    assert list(body) == list(case["body"])
    assert exact(body) == exact(case["body"])


@pytest.mark.parametrize("case", cases("session_body"))
def test_session_body(case: dict[str, Any]) -> None:
    body = ragflow.session_body(**case["args"])
    assert list(body) == list(case["body"])
    assert exact(body) == exact(case["body"])


@pytest.mark.parametrize("case", cases("session_messages"))
def test_session_messages(case: dict[str, Any]) -> None:
    shown = ragflow.session_messages(case["opener"], case["path"])
    assert exact(shown) == exact(case["messages"])


@pytest.mark.parametrize("case", cases("system_prompt"))
def test_system_prompt(case: dict[str, Any]) -> None:
    assert assistant_defaults.system_prompt(case["config"]) == case["prompt"]


@pytest.mark.parametrize("case", cases("model_params"))
def test_model_params(case: dict[str, Any]) -> None:
    assert exact(assistant_defaults.model_params(case["config"])) == exact(case["params"])


def test_a_new_assistant_round_trips() -> None:
    # decode_assistant → assistant_config → assistant_body, as POST /api/v1/chats does it.
    settings = ragflow.decode_assistant(
        {"name": "Helper", "llm": {"model_name": "m2"}, "prompt": {"opener": "Hey"}},
        creating=True,
        known_models=["m", "m2"],
    )
    config = assistant_defaults.assistant_config(settings, "m")
    body = ragflow.assistant_body("as1", "alice", settings["name"], config, 0, 0)
    assert body["llm"]["model_name"] == "m2"
    assert body["prompt"]["opener"] == "Hey"
    assert assistant_defaults.opener_of(config) == "Hey"
    assert assistant_defaults.model_params(config) == assistant_defaults.LLM_DEFAULTS


# -- errors and server frames -----------------------------------------------------------
@pytest.mark.parametrize("case", cases("errors"))
def test_errors(case: dict[str, Any]) -> None:
    error = build_error(case["error"])
    assert ragflow.code_for(error) == case["code"]
    assert exact(ragflow.error_body(error)) == exact(case["body"])
    assert ragflow.failure_frame(error) == wire(case["failure_frame"])


@pytest.mark.parametrize("case", cases("server_frames"))
def test_server_frames(case: dict[str, Any]) -> None:
    if case["call"] == "HEALTHY":
        sent = [ragflow.HEALTHY]
    elif case["call"] == "echo":
        sent = [ragflow.echo(*case["args"])]
    else:
        sent = getattr(ragflow, case["call"])(*case["args"])
    assert sent == [wire(frame) for frame in case["frames"]]
    assert exact([json.loads(text) for text in sent]) == exact(case["frames"])
