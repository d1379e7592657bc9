"""Golden vectors for the upstream's chunk decoding (`gateway/upstream/chunks.py`): a
streamed body in, chunks and how the stream ended out; no event loop, no socket.

The vectors live in `tests/vectors/upstream/`, one kind of file::

    <case>.json   {"description", "model", "max_event_bytes"?: <the bound>,
                   "body": ["data: {...}\\n\\n", ...],         joined, sent as UTF-8
                   "chunks": [{"text"?, "reasoning"?, "finish_reason"?,
                               "usage"?: {"prompt_tokens", "completion_tokens"},
                               "tool_calls"?: [{"index", "id"?, "name"?,
                                                "arguments"?, "extra"?}, ...]}, ...],
                                   (an id the decoder makes up is "call_made<n>")
                   "end": "done"       [DONE] read: the connection goes back to the pool
                        | "closed"     the body ended, the reply whole
                        | {"error": {"message", "detail"}}}

Each body is fed whole, one event a piece (as model servers send them: the
decoder's fast path), one byte at a time, and cut in two at every byte: a
server's reads split anywhere (inside a line end, inside a UTF-8 character),
and what comes out may not depend on where.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.upstream import Chunk
from gateway.upstream.chunks import MAX_EVENT_BYTES, BadStream, ChunkDecoder

VECTORS = sorted((Path(__file__).parent.parent / "vectors" / "upstream").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def shape(chunk: Chunk) -> dict[str, Any]:
    """A chunk as the vectors write it: only what is not the default."""
    shaped: dict[str, Any] = {}
    if chunk.text:
        shaped["text"] = chunk.text
    if chunk.reasoning:
        shaped["reasoning"] = chunk.reasoning
    if chunk.finish_reason is not None:
        shaped["finish_reason"] = chunk.finish_reason
    if chunk.usage is not None:
        assert chunk.usage.estimated is False  # counted by the server, never guessed here
        shaped["usage"] = {
            "prompt_tokens": chunk.usage.prompt_tokens,
            "completion_tokens": chunk.usage.completion_tokens,
        }
    if chunk.tool_calls:
        shaped["tool_calls"] = [
            {"index": call.index}
            | ({"id": call.call_id} if call.call_id is not None else {})
            | ({"name": call.name} if call.name is not None else {})
            | ({"arguments": call.arguments} if call.arguments else {})
            | ({"extra": call.extra} if call.extra is not None else {})
            for call in chunk.tool_calls
        ]
    return shaped


def run(vector: dict[str, Any], pieces: list[bytes]) -> dict[str, Any]:
    """What `upstream/openai.py` does with the pieces, minus the I/O."""
    made_up = (f"call_made{number}" for number in itertools.count())
    decoder = ChunkDecoder(
        vector["model"], vector.get("max_event_bytes", MAX_EVENT_BYTES), made_up.__next__
    )
    chunks: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            for chunk in decoder.feed(piece):
                chunks.append(shape(chunk))
            if decoder.done:
                return {"chunks": chunks, "end": "done"}
        for chunk in decoder.close():
            chunks.append(shape(chunk))
    except BadStream as exc:
        return {"chunks": chunks, "end": {"error": {"message": exc.message, "detail": exc.detail}}}
    return {"chunks": chunks, "end": "closed"}


def body_of(vector: dict[str, Any]) -> bytes:
    return "".join(vector["body"]).encode("utf-8")


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_whole(path: Path) -> None:
    vector = load(path)
    expected = {"chunks": vector["chunks"], "end": vector["end"]}
    assert run(vector, [body_of(vector)]) == expected


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_one_event_a_piece(path: Path) -> None:
    vector = load(path)
    body = body_of(vector)
    expected = {"chunks": vector["chunks"], "end": vector["end"]}
    pieces = [event + b"\n\n" for event in body.split(b"\n\n")]
    pieces[-1] = pieces[-1][:-2]  # what followed the last blank line, as it was
    assert b"".join(pieces) == body
    assert run(vector, pieces) == expected


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_byte_by_byte(path: Path) -> None:
    vector = load(path)
    body = body_of(vector)
    expected = {"chunks": vector["chunks"], "end": vector["end"]}
    assert run(vector, [body[i : i + 1] for i in range(len(body))]) == expected


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_cut_in_two_anywhere(path: Path) -> None:
    vector = load(path)
    body = body_of(vector)
    expected = {"chunks": vector["chunks"], "end": vector["end"]}
    for cut in range(1, len(body)):
        assert run(vector, [body[:cut], b"", body[cut:]]) == expected, f"cut at byte {cut}"


def test_every_vector_is_well_formed() -> None:
    assert len(VECTORS) >= 10
    for path in VECTORS:
        vector = load(path)
        assert set(vector) <= {"description", "model", "max_event_bytes", "body", "chunks", "end"}
        assert vector["end"] in ("done", "closed") or set(vector["end"]) == {"error"}


def test_nothing_is_taken_after_done() -> None:
    decoder = ChunkDecoder("m")
    assert list(decoder.feed(b"data: [DONE]\n\n")) == [] and decoder.done
    assert list(decoder.feed(b'data: {"choices":[{"delta":{"content":"late"}}]}\n\n')) == []
    assert list(decoder.close()) == []


def test_a_chunk_nested_too_deeply_is_a_bad_stream_not_a_crash() -> None:
    decoder = ChunkDecoder("m")
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(BadStream, match="not JSON"):
        list(decoder.feed(f"data: {deep}\n\n".encode()))
