"""The frames written for each delta by splicing JSON text (Nadoo's `text-delta`,
RAGFlow's answer chunk) are, byte for byte, what the general path writes from a
dict with `jsonwire.dumps`: held to it on random text, ids, indexes and seqs,
lone surrogates and control characters among them."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.events import ReplyStarted, TextDelta
from gateway.flavours import nadoo, ragflow

TEXTS = st.text() | st.sampled_from(["\ud800", '"\\', "\x00\n\t", "\u2028", "Grüße ✓ 😀"])
NOW = (
    st.floats(-4e9, 4e9)
    | st.integers(-4_000_000_000, 4_000_000_000)
    | st.sampled_from([1.0, 1.999999, -0.5, 0.0])
)


@settings(max_examples=2000, deadline=None)
@given(TEXTS, st.integers(1, 2**40), st.booleans(), NOW, st.integers(0, 5))
def test_nadoo_text_delta(text: str, seq: int, numbered: bool, now: float, before: int) -> None:
    encoder = nadoo.Encoder("me", clock=lambda: now, seq=numbered)
    encoder.encode(ReplyStarted("c1", "m1", 0, "u", None, "model", 0.0))
    for index in range(before):
        encoder.encode(TextDelta("c1", "m1", index + 1, "x"))
    fields: dict[str, object] = {"text": text, "index": before}
    if numbered:
        fields["seq"] = seq
    assert encoder.encode(TextDelta("c1", "m1", seq, text)) == [
        nadoo.frame("text-delta", now, fields)
    ]


@settings(max_examples=300, deadline=None)
@given(NOW)
def test_nadoo_timestamp_is_strftimes(now: float) -> None:
    for moment in (now, now + 0.5, now + 1, now):  # the reused second, and a new one
        assert nadoo.timestamp(moment) == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


@settings(max_examples=2000, deadline=None)
@given(
    TEXTS,
    TEXTS,
    TEXTS,
    st.sampled_from([{}, {"final": False}, {"final": True}]),
    st.none() | st.integers(0, 2**40),
)
def test_ragflow_answer_chunk(
    answer: str, message_id: str, session_id: str, extra: dict[str, bool], seq: int | None
) -> None:
    members = {**extra, **({} if seq is None else {"seq": seq})}
    tail = "".join(
        f',"{key}":{str(value).lower() if isinstance(value, bool) else value}'
        for key, value in members.items()
    )
    assert ragflow.delta_chunk(answer, message_id, session_id, tail) == ragflow.chunk(
        answer, message_id, session_id, **members
    )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(TEXTS, min_size=1, max_size=5), st.booleans(), st.sampled_from(["delta", "cumulative"])
)
def test_ragflow_encoder_deltas(texts: list[str], numbered: bool, mode: ragflow.AnswerMode) -> None:
    encoder = ragflow.AnswerEncoder(mode, seq=numbered)
    encoder.expect("m1")
    encoder.encode(ReplyStarted("s1", "m1", 0, "u", None, "model", 0.0))
    for seq, text in enumerate(texts, start=1):
        extra: dict[str, object] = {"final": False} if mode == "delta" else {}
        if numbered:
            extra["seq"] = seq
        answer = text if mode == "delta" else "".join(texts[:seq])
        assert encoder.encode(TextDelta("s1", "m1", seq, text)) == [
            ragflow.chunk(answer, "m1", "s1", **extra)
        ]
