"""The numbering of a reply's tool calls (`gateway/upstream/tool_calls.py`), beyond
the golden vectors: any calls, cut anywhere, sent in each of the nine ways servers
send them, come out as the same calls, each whole, in OpenAI's numbering, each with
an id of its own.  No I/O."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstream import ToolCallPiece
from gateway.upstream.tool_calls import MAX_TOOL_CALLS, BadCalls, Calls

# A call: its function's name and its arguments (an object, as tools take).
Call = tuple[str, dict[str, Any]]

# Text that moves a naive reader: brackets and quotes inside strings, escapes.
TRICKY = st.text(alphabet='ab {}[]"\\:,é', max_size=12)
ARGUMENTS = st.dictionaries(
    st.sampled_from(["city", "path", "q", "n"]),
    st.one_of(TRICKY, st.integers(-5, 5), st.lists(TRICKY, max_size=3)),
    max_size=3,
)
CALLS = st.lists(
    st.tuples(st.sampled_from(["weather", "clock"]), ARGUMENTS), min_size=1, max_size=5
)


def cut(text: str, cuts: list[int]) -> list[str]:
    """`text` in pieces at the given places (anywhere: inside a string, an escape)."""
    places = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(places) if b > a]


def openai(calls: list[Call], cuts: list[int], index_from: int = 0) -> Iterator[dict[str, Any]]:
    """OpenAI's and vLLM's way (`index_from` 1: a proxy that numbers from 1)."""
    for number, (name, arguments) in enumerate(calls):
        index = number + index_from
        function = {"name": name, "arguments": ""}
        yield {"index": index, "id": f"call_{number}", "type": "function", "function": function}
        for piece in cut(json.dumps(arguments), cuts):
            yield {"index": index, "function": {"arguments": piece}}


def interleaved(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """Parallel calls whose pieces alternate, told apart by index alone."""
    heads = [
        {"index": n, "id": f"call_{n}", "function": {"name": name, "arguments": ""}}
        for n, (name, _) in enumerate(calls)
    ]
    yield from heads
    pieces = [cut(json.dumps(arguments), cuts) for _, arguments in calls]
    for round_ in itertools.zip_longest(*pieces):
        for n, piece in enumerate(round_):
            if piece is not None:
                yield {"index": n, "function": {"arguments": piece}}


def repeated(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """The id, type and name on every piece (TGI, some proxies), and once more with
    nothing after the call is whole."""
    for number, (name, arguments) in enumerate(calls):
        for piece in [*cut(json.dumps(arguments), cuts), ""]:
            function = {"name": name, "arguments": piece}
            yield {
                "index": number,
                "id": f"call_{number}",
                "type": "function",
                "function": function,
            }


def shared_id(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """One id for every call, each its own index (DeepSeek's, GLM's parallel calls)."""
    for number, (name, arguments) in enumerate(calls):
        yield {"index": number, "id": "call_0", "function": {"name": name, "arguments": ""}}
        for piece in cut(json.dumps(arguments), cuts):
            yield {"index": number, "id": "call_0", "function": {"arguments": piece}}


def shared_id_and_index(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """One id and index 0 for every call, its name on its first piece alone."""
    for name, arguments in calls:
        yield {"index": 0, "id": "call_x", "function": {"name": name, "arguments": ""}}
        for piece in cut(json.dumps(arguments), cuts):
            yield {"index": 0, "function": {"arguments": piece}}


def id_changing(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """A new id on every piece of a call, the index the same."""
    fresh = itertools.count()
    for number, (name, arguments) in enumerate(calls):
        yield {"index": number, "id": f"x{next(fresh)}", "function": {"name": name}}
        for piece in cut(json.dumps(arguments), cuts):
            yield {"index": number, "id": f"x{next(fresh)}", "function": {"arguments": piece}}


def reused_index(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """Every call under index 0, told apart by its id (a parser restarting the count)."""
    for number, (name, arguments) in enumerate(calls):
        yield {"index": 0, "id": f"call_{number}", "function": {"name": name, "arguments": ""}}
        for piece in cut(json.dumps(arguments), cuts):
            yield {"index": 0, "function": {"arguments": piece}}


def no_index_no_id(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """Neither index nor id: a name starts a call, bare arguments go on the latest."""
    for name, arguments in calls:
        pieces = cut(json.dumps(arguments), cuts) or [""]
        yield {"function": {"name": name, "arguments": pieces[0]}}
        for piece in pieces[1:]:
            yield {"function": {"arguments": piece}}


def objects(calls: list[Call], cuts: list[int]) -> Iterator[dict[str, Any]]:
    """Each call whole, its arguments an object, no index, no id."""
    for name, arguments in calls:
        yield {"function": {"name": name, "arguments": arguments}}


STYLES = [
    openai,
    interleaved,
    repeated,
    shared_id,
    shared_id_and_index,
    id_changing,
    reused_index,
    no_index_no_id,
    objects,
]


def joined(pieces: list[ToolCallPiece]) -> list[dict[str, str]]:
    """What a client joining the pieces by index holds (as the `openai` package's
    stream helper does): a piece with an index it has not seen must be the next."""
    calls: list[dict[str, str]] = []
    for piece in pieces:
        if piece.index == len(calls):
            calls.append({"id": "", "name": "", "arguments": ""})
        call = calls[piece.index]  # an index past the next would fail the client
        call["id"] += piece.call_id or ""
        call["name"] += piece.name or ""
        call["arguments"] += piece.arguments
    return calls


def decoded(entries: Iterator[dict[str, Any]]) -> list[ToolCallPiece]:
    numbers = itertools.count()
    calls = Calls(lambda: f"made{next(numbers)}")
    return [p for p in map(calls.piece, entries) if p is not None]


@settings(max_examples=150, deadline=None)
@given(calls=CALLS, cuts=st.lists(st.integers(0, 200), max_size=6), style=st.sampled_from(STYLES))
def test_any_calls_sent_any_way_come_out_whole(
    calls: list[Call], cuts: list[int], style: Any
) -> None:
    got = joined(decoded(style(calls, cuts)))
    assert [(call["name"], json.loads(call["arguments"])) for call in got] == calls
    ids = [call["id"] for call in got]
    assert all(ids) and len(set(ids)) == len(ids)


def test_a_new_id_on_every_piece_is_one_call_however_long() -> None:
    arguments = json.dumps({"text": "x" * 400})
    entries = [{"index": 0, "id": "first", "function": {"name": "write", "arguments": ""}}]
    entries += [
        {"index": 0, "id": f"id{n}", "function": {"arguments": char}}
        for n, char in enumerate(arguments)
    ]
    (call,) = joined(decoded(iter(entries)))
    assert call == {"id": "first", "name": "write", "arguments": arguments}


def test_calls_past_the_bound_end_the_reply() -> None:
    whole = [{"id": f"c{n}", "function": {"name": "f", "arguments": "{}"}} for n in range(200)]
    assert len(joined(decoded(iter(whole[:MAX_TOOL_CALLS])))) == MAX_TOOL_CALLS
    with pytest.raises(BadCalls, match="more than 128"):
        decoded(iter(whole[: MAX_TOOL_CALLS + 1]))


def test_the_indexes_remembered_are_bounded() -> None:
    """A server that numbers every piece anew keeps at most one entry per call."""
    calls = Calls()
    calls.piece({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}})
    for index in range(10_000):
        calls.piece({"index": index, "id": "a", "function": {"arguments": " "}})
    assert len(calls._by_index) <= MAX_TOOL_CALLS
