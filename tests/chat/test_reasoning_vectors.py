"""Golden vectors for the reasoning splitter (`gateway/chat/reasoning.py`): streamed
answer text in, reasoning and text blocks out; no event loop.

The vectors live in `tests/vectors/reasoning/`, one kind of file::

    <case>.json   {"description", "reasoning_tags"?: false,
                   "input": ["<think>…", ...],                  joined, then fed
                   "blocks": [["reasoning" | "text", "<text>"], ...]}

`blocks` are the pieces that came out, joined: a tag opening or closing starts
a new block, and so does a change of kind.  Each input is fed whole, one
character at a time, and cut in two at every character: what comes out may not
depend on where the model server's deltas were cut.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.chat.reasoning import BREAK, MAX_TAG_CHARS, Piece, Splitter

VECTORS = sorted((Path(__file__).parent.parent / "vectors" / "reasoning").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def blocks(pieces: list[Piece]) -> list[list[str]]:
    joined: list[list[str]] = []
    current: list[str] | None = None
    for kind, text in pieces:
        if kind == BREAK:
            current = None
        elif current is not None and current[0] == kind:
            current[1] += text
        else:
            current = [kind, text]
            joined.append(current)
    return joined


def run(vector: dict[str, Any], cuts: list[str]) -> list[list[str]]:
    splitter = Splitter(vector.get("reasoning_tags", True))
    pieces: list[Piece] = []
    for cut in cuts:
        out = splitter.feed(cut)
        assert all(text or kind == BREAK for kind, text in out), "no empty pieces"
        pieces += out
    pieces += splitter.close()
    return blocks(pieces)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_whole(path: Path) -> None:
    vector = load(path)
    assert run(vector, ["".join(vector["input"])]) == vector["blocks"]


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_character_by_character(path: Path) -> None:
    vector = load(path)
    assert run(vector, list("".join(vector["input"]))) == vector["blocks"]


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_cut_in_two_anywhere(path: Path) -> None:
    vector = load(path)
    text = "".join(vector["input"])
    for cut in range(1, len(text)):
        assert run(vector, [text[:cut], "", text[cut:]]) == vector["blocks"], f"cut at {cut}"


def test_every_vector_is_well_formed() -> None:
    assert len(VECTORS) >= 8
    for path in VECTORS:
        vector = load(path)
        assert set(vector) <= {"description", "reasoning_tags", "input", "blocks"}
        assert all(kind in ("text", "reasoning") for kind, _ in vector["blocks"])


def test_a_line_that_never_closes_its_start_tag_is_not_held_back_while_it_grows() -> None:
    # A model's 80 KB line "<think …" with no ">": held whole, it was copied and
    # searched again at each delta (15 s of the loop).  At most a tag's length is.
    splitter = Splitter()
    deltas = ["<think "] + ["word " for _ in range(4000)]
    out: list[Piece] = []
    for delta in deltas:
        out += splitter.feed(delta)
        assert len(splitter._held) < MAX_TAG_CHARS
    out += splitter.close()
    assert blocks(out) == [["text", "".join(deltas)]]
