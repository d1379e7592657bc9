"""`SSEParser.single`, the one-step path for a piece that is one whole event, gives
what the general path gives, however a stream of any events is cut: held to
`events` alone on random streams (data lines, comments, other fields, CRLF, CR
and LF endings, non-ASCII text) and random cuts, event boundaries among them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.flavours.sse import SSEParser

ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
VALUES = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    max_size=12,
)
LINES = st.one_of(
    st.builds(lambda value: f"data: {value}", VALUES),
    st.builds(lambda value: f"data:{value}", VALUES),
    st.builds(lambda value: f": {value}", VALUES),
    st.builds(lambda name, value: f"{name}: {value}", st.sampled_from(["event", "id"]), VALUES),
    st.just("data"),
)
EVENTS = st.lists(st.tuples(LINES, ENDINGS), min_size=1, max_size=3)
STREAMS = st.lists(st.tuples(EVENTS, ENDINGS), min_size=1, max_size=6)


def _stream(events: list[tuple[list[tuple[str, str]], str]]) -> tuple[bytes, list[int]]:
    """The stream's bytes, and where each event ends."""
    body = b""
    ends = []
    for lines, blank in events:
        body += "".join(line + ending for line, ending in lines).encode() + blank.encode()
        ends.append(len(body))
    return body, ends


def _general(pieces: list[bytes]) -> list[str]:
    parser = SSEParser()
    found = [payload for piece in pieces for payload in parser.events(piece)]
    return found + parser.close()


def _fast_first(pieces: list[bytes]) -> list[str]:
    parser = SSEParser()
    found: list[str] = []
    for piece in pieces:
        one = parser.single(piece)
        found += [one] if one is not None else list(parser.events(piece))
    return found + parser.close()


@settings(max_examples=3000, deadline=None)
@given(STREAMS, st.data())
def test_the_one_step_path_gives_what_the_general_path_gives(
    events: list[tuple[list[tuple[str, str]], str]], data: st.DataObject
) -> None:
    body, ends = _stream(events)
    cuts = data.draw(
        st.lists(st.sampled_from(ends) | st.integers(0, len(body)), max_size=8).map(sorted)
    )
    pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert b"".join(pieces) == body
    assert _fast_first(pieces) == _general(pieces) == _general([body])


def test_a_piece_that_is_one_event_is_taken_in_one_step() -> None:
    parser = SSEParser()
    assert parser.single(b'data: {"a":1}\n\n') == '{"a":1}'
    assert parser.single("data: Grüße\n\n".encode()) == "Grüße"
    for other in (
        b"data: a\n\ndata: b\n\n",  # two events
        b"data: a\r\n\r\n",  # CR: the general path makes the line ends LF
        b"data: a\ndata: b\n\n",  # two data lines
        b"event: x\ndata: a\n\n",
        b"data: a\n",  # not yet whole
        b"data:a\n\n",  # no space: the general path strips it or not
    ):
        assert parser.single(other) is None
    assert parser.events(b"data: part") is not None and list(parser.events(b"ial")) == []
    # Something buffered: the next piece is not an event of its own.
    assert parser.single(b"data: b\n\n") is None
    assert list(parser.events(b"\n\n")) == ["partial"]
