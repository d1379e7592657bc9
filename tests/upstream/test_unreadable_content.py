"""Content deltas that are not text (and tool calls with nothing in them) are skipped,
never silently: the decoder notes them (quoted, bounded) and `upstream/openai.py`
logs them once per reply."""

from __future__ import annotations

from gateway.upstream.chunks import QUOTED_CHARS, ChunkDecoder


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
    assert decoder.unreadable == ["5", "{'x': 1}", "[{'type': 'image_url'}]"]


def test_a_huge_unreadable_content_is_quoted_short() -> None:
    decoder = ChunkDecoder("m")
    huge = "[" + ",".join(["1"] * 10_000) + "]"
    list(decoder.feed(f'data: {{"choices":[{{"delta":{{"content":{huge}}}}}]}}\n\n'.encode()))
    assert len(decoder.unreadable[0]) == QUOTED_CHARS


def test_tool_calls_with_nothing_readable_are_noted() -> None:
    """A `tool_calls` that is no list, or an entry with no id, name or arguments, is
    skipped and noted; a readable call beside it still comes out."""
    decoder = ChunkDecoder("m")
    body = (
        b'data: {"choices":[{"delta":{"tool_calls":"weather"}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0},'
        b'{"index":1,"id":"c1","function":{"name":"f","arguments":7}}]}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[]}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    calls = [chunk.tool_calls for chunk in decoder.feed(body)]
    assert [[(call.index, call.call_id, call.name) for call in pieces] for pieces in calls] == [
        [],
        [(1, "c1", "f")],
        [],
    ]
    assert calls[1][0].arguments == ""  # arguments that are neither text nor an object
    assert decoder.unreadable == ["'weather'", "{'index': 0}"]
