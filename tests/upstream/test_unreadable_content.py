"""Content deltas that are not text are skipped, never silently: the decoder notes
them (quoted, bounded) and `upstream/openai.py` logs them once per reply."""

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
