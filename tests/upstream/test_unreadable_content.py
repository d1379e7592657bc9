"""Content deltas that are not text (and tool calls with nothing in them) are skipped,
never silently: the decoder notes them (by their shape, bounded) and `upstream/openai.py`
logs them once per reply."""

from __future__ import annotations

from gateway.upstream.chunks import MAX_SHAPES, SHAPE_CHARS, BadStream, ChunkDecoder


def test_content_that_is_not_text_is_noted() -> None:
    decoder = ChunkDecoder("m")
    body = (
        b'data: {"choices":[{"delta":{"content":5}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":{"x":1}}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":[{"type":"image_url"}]}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":null}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":[]}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    texts = [chunk.text for chunk in decoder.feed(body)]
    assert texts == ["", "", "", "", "", "ok"]
    # Described by their shape, never quoted: what a server sent may be the reply's text.
    assert decoder.unreadable == ["int", "{x: int}", "[{type: str(9)}]"]


def test_a_huge_or_deep_unreadable_content_is_described_short() -> None:
    decoder = ChunkDecoder("m")
    huge = "[" + ",".join(['"secret text"'] * 10_000) + "]"
    deep = "[" * 900 + "]" * 900
    wide = "{" + ",".join(f'"k{n}": "{n}"' for n in range(100)) + "}"
    for content in (huge, deep, wide):
        body = f'data: {{"choices":[{{"delta":{{"content":{content}}}}}]}}\n\n'
        list(decoder.feed(body.encode()))
    assert decoder.unreadable[0] == "[str(11), … 10000 items]"
    assert decoder.unreadable[1] == "[[[…]]]"
    assert decoder.unreadable[2].endswith(", …}") and len(decoder.unreadable[2]) <= SHAPE_CHARS
    assert not any("secret" in said for said in decoder.unreadable)


def test_tool_calls_with_nothing_readable_are_noted() -> None:
    """A `tool_calls` that is no list, or an entry that names no call and brings
    nothing, is skipped and noted; a readable call beside it still comes out, and an
    empty piece of a call already begun (which servers send) is no fault."""
    decoder = ChunkDecoder("m")
    body = (
        b'data: {"choices":[{"delta":{"tool_calls":"weather"}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0},'
        b'{"index":1,"id":"c1","function":{"name":"f","arguments":7}}]}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":""}}]}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    calls = [chunk.tool_calls for chunk in decoder.feed(body)]
    assert [[(call.index, call.call_id, call.name) for call in pieces] for pieces in calls] == [
        [],
        [(0, "c1", "f")],
        [],
    ]
    assert calls[1][0].arguments == ""  # arguments that are neither text nor an object
    assert decoder.unreadable == ["str(7)", "{index: int}"] and decoder.skipped == 2


def test_skipped_deltas_are_counted_and_only_the_first_few_described() -> None:
    decoder = ChunkDecoder("m")
    list(decoder.feed(b'data: {"choices":[{"delta":{"content":5}}]}\n\n' * 100))
    assert decoder.skipped == 100 and len(decoder.unreadable) == MAX_SHAPES


def test_arguments_nested_deeply_are_relayed_or_end_the_reply_never_a_traceback() -> None:
    """Arguments nested about as deep as the JSON reader takes (orjson: 1,024 levels)
    may be past what the writer can write out again, or what `repr` can quote: a
    broken reply then (an error the client reads), never a traceback."""
    ended = 0
    for depth in range(900, 1040, 5):
        deep = "[" * depth + "]" * depth
        entry = f'{{"id":"c1","function":{{"name":"f","arguments":{{"a":{deep}}}}}}}'
        event = f'data: {{"choices":[{{"delta":{{"tool_calls":[{entry}]}}}}]}}\n\n'
        try:
            (chunk,) = ChunkDecoder("m").feed(event.encode())
        except BadStream:
            ended += 1
        else:
            assert len(chunk.tool_calls[0].arguments) == 2 * depth + 6
    assert ended  # past orjson's 1,024 levels at least: not JSON
