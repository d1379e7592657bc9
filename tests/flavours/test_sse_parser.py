"""`SSEParser.single`, the one-step path for a piece that is one whole event, gives
what the general path gives, however a stream of any events is cut: held to
`events` alone on random streams (data lines, comments, other fields, CRLF, CR
and LF endings, non-ASCII text) and random cuts, event boundaries among them.
And the bound: an event past it is refused, after the events before it, whether
it arrives whole in one piece or cut anywhere."""

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


def _bounded(pieces: list[bytes], bound: int, one_step: bool) -> tuple[list[str], bool]:
    """The payloads read, and whether the stream was refused for an event past `bound`."""
    parser = SSEParser(bound)
    found: list[str] = []
    try:
        for piece in pieces:
            one = parser.single(piece) if one_step else None
            if one is not None:
                found.append(one)
            else:
                for payload in parser.events(piece):
                    found.append(payload)
    except ValueError:
        return found, True
    return found + parser.close(), False


def _raw_events(body: bytes) -> list[bytes]:
    """The stream's events as the parser sees them: line ends made LF, each without its
    blank line; an unfinished last one (its bytes before a last LF) too."""
    lf = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    raws = []
    while (end := lf.find(b"\n\n")) >= 0:
        raws.append(lf[:end])
        lf = lf[end + 2 :]
    if lf:
        raws.append(lf[:-1] if lf.endswith(b"\n") else lf)
    return raws


@settings(max_examples=3000, deadline=None)
@given(STREAMS, st.integers(1, 40), st.data())
def test_an_event_past_the_bound_is_refused_however_it_arrives(
    events: list[tuple[list[tuple[str, str]], str]], bound: int, data: st.DataObject
) -> None:
    """Whole in one piece (the one-step path or the general one) or cut anywhere, an
    event larger than the bound stops the stream after the events before it, and
    one within it is read."""
    body, ends = _stream(events)
    cuts = data.draw(
        st.lists(st.sampled_from(ends) | st.integers(0, len(body)), max_size=8).map(sorted)
    )
    pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    # Each event whole in a piece of its own, as model servers send them.
    whole = [body[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    unbounded = _general([body])
    raws = _raw_events(body)
    over = next((i for i, raw in enumerate(raws) if len(raw) > bound), None)
    outcomes = {
        (tuple(found), refused)
        for found, refused in (
            _bounded(pieces, bound, one_step=True),
            _bounded(pieces, bound, one_step=False),
            _bounded(whole, bound, one_step=True),
            _bounded([body], bound, one_step=False),
        )
    }
    assert len(outcomes) == 1, outcomes
    ((found, refused),) = outcomes
    if over is None:
        assert not refused and list(found) == unbounded
    else:
        expected = _general([b"".join(raw + b"\n\n" for raw in raws[:over])])
        assert refused and list(found) == expected


def test_one_oversize_event_in_one_read_is_refused() -> None:
    event = b"data: " + b"x" * 100 + b"\n\n"
    parser = SSEParser(106)  # the event's own bytes, without its blank line
    assert parser.single(event) == "x" * 100
    parser = SSEParser(105)
    assert parser.single(event) is None  # the general path refuses it
    found = parser.events(b"data: a\n\n" + event)
    assert next(found) == "a"
    try:
        next(found)
    except ValueError as exc:
        assert "larger than 105 bytes" in str(exc)
    else:
        raise AssertionError("an event past the bound was read")


def test_an_iterator_left_open_across_close_sees_what_the_parser_sees() -> None:
    # `events` is lazy; one left half read, then resumed after `close`, reads the
    # parser's state then (nothing), not what it had buffered before.
    parser = SSEParser()
    pending = parser.events(b"data: a\n\ndata: b\n\n")
    assert next(pending) == "a"
    assert parser.close() == ["b"]
    assert list(pending) == []
    assert parser.feed(b"data: c\n\n") == ["c"]
    assert (
        parser.feed(b"da") == [] and parser.feed(b"ta: d\n") == [] and parser.feed(b"\n") == ["d"]
    )
