"""The reasoning splitter's fast path (a piece with no first character of any start
tag is text as it is) gives exactly what the full tag search gives, for any text
cut anywhere: hypothesis against the same splitter with the fast path taken away.

The alphabet is made of the tags' own fragments, so the texts are full of whole,
cut and almost-tags, attributes and line ends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat import reasoning
from gateway.chat.reasoning import REASONING_TAGS, SOLUTION_TAGS, Piece, Splitter

FRAGMENTS = sorted(
    {fragment for start, end in REASONING_TAGS + SOLUTION_TAGS for fragment in (start, end)}
    | {"<", ">", "|", "/", "◁", "▷", " ", "\n", "a", "Paris.", "think", ' x="1"', "2 < 3"}
)
EVERYTHING = re.compile(r"[\s\S]")  # "a tag may start anywhere": the full search always


def feed(splitter: Splitter, cuts: list[str]) -> list[Piece]:
    pieces: list[Piece] = []
    for cut in cuts:
        pieces += splitter.feed(cut)
    return pieces + splitter.close()


def without_fast_path(reasoning_tags: bool, cuts: list[str]) -> list[Piece]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reasoning, "_FIRSTS", {True: EVERYTHING, False: EVERYTHING})
        return feed(Splitter(reasoning_tags), cuts)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join), max_size=12),
    st.booleans(),
)
def test_the_fast_path_changes_nothing(cuts: list[str], reasoning_tags: bool) -> None:
    assert feed(Splitter(reasoning_tags), cuts) == without_fast_path(reasoning_tags, cuts)


def test_plain_text_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    searched: list[str] = []
    full = reasoning._start_re

    def counted(tag: str) -> re.Pattern[str]:
        searched.append(tag)
        return full(tag)

    monkeypatch.setattr(reasoning, "_start_re", counted)
    splitter = Splitter()
    assert splitter.feed("Paris is the capital") == [("text", "Paris is the capital")]
    assert searched == []  # no tag was looked for
    splitter.feed(" of <think")  # may be a tag: the full search
    assert searched
