"""Golden vectors for the OpenAI codec: events in, exact SSE frames out; no event loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gateway.events as events
from gateway.errors import BadRequest
from gateway.flavours.openai import ChunkEncoder, decode_request, tool_calls
from gateway.flavours.sse import SSEParser

VECTORS = sorted((Path(__file__).parent.parent / "vectors" / "openai").glob("*.json"))


def build(spec: dict[str, Any], message_id: str, seq: int) -> events.Event:
    fields = dict(spec)
    kind = fields.pop("type")
    if "usage" in fields:
        fields["usage"] = events.Usage(**fields["usage"])
    cls: type[Any] = events.EVENT_TYPES[kind]
    event: events.Event = cls(chat_id=None, message_id=message_id, seq=seq, **fields)
    return event


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_encoder_matches_golden_frames(path: Path) -> None:
    vector = json.loads(path.read_text())
    encoder = ChunkEncoder(vector["model"], vector["created"], vector["include_usage"])
    frames = []
    for seq, spec in enumerate(vector["events"]):
        frames += [
            frame.decode() for frame in encoder.encode(build(spec, vector["message_id"], seq))
        ]
    assert frames == vector["frames"]
    # Independently of the golden bytes: every frame is a well-formed OpenAI chunk,
    # the text deltas come back whole, and [DONE] ends the stream.
    payloads = SSEParser().feed("".join(frames).encode())
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    text = "".join(spec["text"] for spec in vector["events"] if spec["type"] == "TextDelta")
    rebuilt = ""
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        if "error" in chunk:
            assert set(chunk["error"]) == {"message", "type", "param", "code"}
            continue
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == vector["message_id"]
        for choice in chunk["choices"]:
            rebuilt += choice["delta"].get("content") or ""
        if not chunk["choices"]:
            assert vector["include_usage"] and chunk["usage"]["total_tokens"] > 0
    assert rebuilt == text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "'model'"),
        ({"model": "m", "messages": []}, "'messages'"),
        ({"model": "m", "messages": ["x"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
        ({"model": "m", "messages": [{"role": "user"}], "stream_options": 3}, "stream_options"),
        ({"model": "m", "messages": [{"role": "user"}], "tools": {"a": 1}}, "'tools' must be"),
        ({"model": "m", "messages": [{"role": "user"}], "tools": ["f"]}, "'tools' must be"),
        ({"model": "m", "messages": [{"role": "user"}], "tools": [{}] * 129}, "at most 128"),
        ({"model": "m", "messages": [{"role": "user"}], "tools": [{}], "tool_choice": 1}, "'tool_"),
        (
            {"model": "m", "messages": [{"role": "user"}], "tools": [{}], "parallel_tool_calls": 1},
            "'parallel",
        ),
        ({"model": "m", "messages": [{"role": "user"}], "functions": [{}]}, "deprecated"),
        (
            {"model": "m", "messages": [{"role": "user"}], "tools": [{"type": "custom"}]},
            "only 'function' tools",
        ),
    ],
)
def test_decode_refuses_bad_requests(body: Any, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode_request(body)


def test_decode_keeps_only_known_params() -> None:
    ask = decode_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
            "evil": 1,
        }
    )
    assert ask.stream and ask.include_usage and ask.params == {"temperature": 0.5}


def test_decode_passes_on_what_common_model_servers_take() -> None:
    """vLLM's `chat_template_kwargs` (as the `openai` package's `extra_body` sends it),
    llama.cpp's `grammar`, OpenRouter's `reasoning`: on to the model server as given."""
    extras = {
        "chat_template_kwargs": {"enable_thinking": False},
        "repetition_penalty": 1.1,
        "grammar": 'root ::= "yes" | "no"',
        "reasoning": {"effort": "low"},
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extras}
    assert decode_request({**body, "logprobs": False}).params == extras


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"logprobs": True}, "'logprobs' is not supported"),
        ({"top_logprobs": 3}, "'top_logprobs' is not supported"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio output"),
        ({"modalities": ["text", "audio"]}, "'modalities'"),
    ],
)
def test_decode_refuses_what_the_reply_would_lack(extra: dict[str, Any], fragment: str) -> None:
    """Options whose answer comes in a part of the reply the gateway does not relay
    are refused, not answered without it (a client would read `logprobs: null`)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(BadRequest, match=fragment):
        decode_request(body)
    assert decode_request({**body, **dict.fromkeys(extra)}).params == {}


def test_decode_passes_tool_calling_through_and_leaves_out_an_empty_tools() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    choice = {"type": "function", "function": {"name": "f"}}
    ask = decode_request({**body, "tool_choice": choice, "parallel_tool_calls": False})
    assert ask.params == {"tools": [tool], "tool_choice": choice, "parallel_tool_calls": False}
    # No tools offered: nothing of tool calling goes (servers refuse `tool_choice` alone).
    alone = {**body, "tools": [], "tool_choice": "auto", "parallel_tool_calls": False}
    assert decode_request(alone).params == {}
    assert decode_request({**alone, "functions": [], "function_call": "none"}).params == {}
    # A route that does not relay tools (RAGFlow's) refuses them, not an empty list.
    with pytest.raises(BadRequest, match="not supported on this route"):
        decode_request(body, tools=False)
    assert decode_request(alone, tools=False).params == {}


def test_a_streamed_reply_and_its_tool_calls_whole_say_the_same() -> None:
    """What a client joins from the streamed pieces (as the `openai` package's stream
    helper does) is the message of the same reply not streamed (`tool_calls`)."""
    vector = json.loads((VECTORS[0].parent / "tool_calls.json").read_text())
    built = [build(spec, vector["message_id"], seq) for seq, spec in enumerate(vector["events"])]
    joined: dict[int, dict[str, Any]] = {}
    for payload in SSEParser().feed("".join(vector["frames"]).encode())[:-1]:
        for choice in json.loads(payload)["choices"]:
            for piece in choice["delta"].get("tool_calls", []):
                call = joined.setdefault(
                    piece["index"],
                    {"id": "", "type": "", "function": {"name": "", "arguments": ""}},
                )
                call["id"] += piece.get("id", "")
                call["type"] += piece.get("type", "")
                call["function"]["name"] += piece["function"].get("name", "")
                call["function"]["arguments"] += piece["function"]["arguments"]
    whole = tool_calls(built)
    assert whole == [joined[index] for index in sorted(joined)]
    assert [json.loads(call["function"]["arguments"]) for call in whole] == [
        {"city": "Tromsø"},
        {},
    ]
    assert [call["id"] for call in whole] == ["call_a", "call_b"]


def test_what_else_a_server_put_on_a_call_is_relayed_streamed_and_whole() -> None:
    """Gemini's `extra_content` (a thought signature the client must send back)."""
    signature = {"google": {"thought_signature": "c2ln"}}
    pieces = [
        events.ToolCallDelta(
            None, "m1", 1, 0, "", "call_1", "weather", {"extra_content": signature}
        ),
        events.ToolCallDelta(None, "m1", 2, 0, '{"city": "Paris"}'),
    ]
    encoder = ChunkEncoder("m", 1700000000, False)
    (frame,) = encoder.encode(pieces[0])
    (call,) = json.loads(frame.decode()[len("data: ") :])["choices"][0]["delta"]["tool_calls"]
    assert call["extra_content"] == signature and call["id"] == "call_1"
    (whole,) = tool_calls(pieces)
    assert whole == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        "extra_content": signature,
    }


# SSE parsing, in h11's style: each vector whole, one byte at a time, and split before its end.
SSE_VECTORS = [
    (b"data: a\n\n", ["a"]),
    (b"data:a\r\n\r\n", ["a"]),
    (b"data: a\r\rdata: b\r\r", ["a", "b"]),
    (b": comment\nevent: x\nid: 1\ndata: one\ndata: two\n\n", ["one\ntwo"]),
    (b"data: \xe2\x9c\x93 ok\n\n", ["✓ ok"]),
    (b"data: [DONE]\n\n", ["[DONE]"]),
    # Lines end with CRLF, LF or CR only: what else str.splitlines breaks on is text
    # (U+2028, U+2029, U+0085 may come raw inside an upstream's JSON strings).
    (b'data: {"t":"a\xe2\x80\xa8b"}\n\n', ['{"t":"a\u2028b"}']),
    (b'data: {"t":"a\xe2\x80\xa9b"}\n\n', ['{"t":"a\u2029b"}']),
    (b'data: {"t":"a\xc2\x85b"}\n\n', ['{"t":"a\x85b"}']),
    (b"data: a\x0bb\x0cc\x1cd\x1de\x1ef\n\n", ["a\x0bb\x0cc\x1cd\x1de\x1ef"]),
    # A blank line is any line end after a line end, mixed too.
    (b"data: a\n\r\ndata: b\r\n\ndata: c\r\n\rdata: d\r\r", ["a", "b", "c", "d"]),
    (b"data: a\r\ndata: b\r\rdata: c\rdata: d\n\n", ["a\nb", "c\nd"]),
]


@pytest.mark.parametrize(("raw", "expected"), SSE_VECTORS)
def test_sse_parser_whole_and_byte_by_byte(raw: bytes, expected: list[str]) -> None:
    assert SSEParser().feed(raw) == expected
    parser = SSEParser()
    got: list[str] = []
    for index in range(len(raw)):
        got += parser.feed(raw[index : index + 1])
    assert got == expected
    parser = SSEParser()
    assert parser.feed(raw[:-1]) + parser.feed(raw[-1:]) == expected


@pytest.mark.parametrize(("raw", "expected"), SSE_VECTORS)
def test_sse_parser_cut_in_two_anywhere(raw: bytes, expected: list[str]) -> None:
    # Inside a CRLF, inside a UTF-8 character: where a read ends changes nothing.
    for cut in range(1, len(raw)):
        parser = SSEParser()
        assert parser.feed(raw[:cut]) + parser.feed(raw[cut:]) == expected, f"cut at {cut}"


def test_sse_parser_events_before_an_oversized_one_come_out_first() -> None:
    parser = SSEParser(max_event_bytes=16)
    events = parser.events(b"data: a\n\ndata: " + b"x" * 32)
    assert next(events) == "a"
    with pytest.raises(ValueError, match="larger than"):
        next(events)


def test_sse_parser_last_event_without_blank_line_and_bound() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n\ndata: tail") == ["x"]
    assert parser.close() == ["tail"]
    with pytest.raises(ValueError, match="larger than"):
        SSEParser(max_event_bytes=16).feed(b"data: " + b"x" * 32)
