"""The frames of resuming, flavour by flavour (pure): resume frames decoded (and bad
ones refused in the flavour's own error), snapshots encoded, `seq` on request only,
encoders primed with what a client already has, and the SSE mirror's ids."""

from __future__ import annotations

import json

import pytest

from gateway.commands import Resume
from gateway.errors import ProtocolError
from gateway.events import ReplyFinished, ReplySnapshot, ReplyStarted, TextDelta, Usage
from gateway.flavours import mirror, nadoo, ragflow
from gateway.flavours.openwebui import OpenWebUIFlavour, SocketEncoder
from gateway.flavours.sse import SSEParser

NOW = 1_700_000_000.0


def started() -> ReplyStarted:
    return ReplyStarted("c1", "m1", 0, "u", None, "model", NOW)


def delta(seq: int) -> TextDelta:
    return TextDelta("c1", "m1", seq, f"w{seq} ")


def finished(seq: int, text: str) -> ReplyFinished:
    return ReplyFinished("c1", "m1", seq, text, Usage(1, 2), "stop", 0.5)


# -- decoding -------------------------------------------------------------------------
def test_socketio_resume_is_decoded_and_a_bad_one_refused() -> None:
    flavour = OpenWebUIFlavour()
    good = {"chat_id": "c1", "data": {"type": "resume", "after": {"m1": 3, "m2": -1}}}
    assert flavour.decode(("events:chat", good)) == Resume((("m1", 3), ("m2", -1)), "c1")
    for after in ({}, {"m1": "3"}, {"m1": -2}, {"m1": True}, [3], None):
        bad = {"chat_id": "c1", "data": {"type": "resume", "after": after}}
        with pytest.raises(ProtocolError):
            flavour.decode(("events:chat", bad))


def test_nadoo_resume_is_decoded_and_a_bad_one_gets_its_error_frame() -> None:
    frame = json.dumps({"type": "resume", "message_id": "m1", "after": 7, "chat_id": "c1"})
    assert nadoo.decode_chat(frame, NOW) == Resume((("m1", 7),), "c1")
    assert nadoo.decode_chat(json.dumps({"type": "resume", "message_id": "m1"}), NOW) == Resume(
        (("m1", -1),), None
    )
    with pytest.raises(ProtocolError) as caught:
        nadoo.decode_chat(json.dumps({"type": "resume", "after": 7}), NOW)
    error = json.loads(str(caught.value.frame))
    assert error["type"] == "error" and error["code"] == "bad_resume"


def test_ragflow_resume_is_decoded_with_its_session_as_chat() -> None:
    frame = json.dumps({"type": "resume", "message_id": "m1", "after": 2, "session_id": "c1"})
    assert ragflow.decode_ws_frame(frame) == Resume((("m1", 2),), "c1")
    assert ragflow.decode_ws_frame(frame, "assistant-in-path") == Resume((("m1", 2),), "c1")
    with pytest.raises(ProtocolError) as caught:
        ragflow.decode_ws_frame(json.dumps({"type": "resume", "message_id": "m1", "after": 1.5}))
    assert json.loads(str(caught.value.frame))["code"] == ragflow.BAD_REQUEST


# -- encoding -------------------------------------------------------------------------
def test_openwebui_snapshot_replaces_the_content_and_a_done_one_ends_the_reply() -> None:
    encoder = SocketEncoder()
    exact = encoder.encode(ReplySnapshot("c1", "m1", 4, "so far", False, True))
    assert [(f[1]["data"]["type"], f[1]["data"]["data"]) for f in exact] == [
        ("chat:message", {"content": "so far", "snapshot": "exact"})
    ]
    done = encoder.encode(ReplySnapshot("c1", "m1", 9, "all", True, False))
    assert [f[1]["data"]["type"] for f in done] == [
        "chat:message",
        "chat:completion",
        "chat:active",
    ]
    assert done[1][1]["data"]["data"] == {"done": True, "content": "all", "snapshot": "stored"}


def test_openwebui_seq_only_when_asked_on_every_envelope_of_a_reply() -> None:
    # Unasked: Open WebUI's own envelope, nothing added.
    plain = SocketEncoder().encode(delta(3))
    assert plain == [
        (
            "events",
            {
                "chat_id": "c1",
                "message_id": "m1",
                "data": {"type": "chat:message:delta", "data": {"content": "w3 "}},
            },
        )
    ]
    numbered = SocketEncoder(seq=True)
    assert numbered.encode(delta(3))[0][1] == {**plain[0][1], "seq": 3}
    assert [f[1]["seq"] for f in numbered.encode(started())] == [0]
    # A catch-up snapshot stands for every event up to its seq.
    snapshot = numbered.encode(ReplySnapshot("c1", "m1", 4, "so far", False, True))
    assert [(f[1]["data"]["type"], f[1]["seq"]) for f in snapshot] == [("chat:message", 4)]
    # An end's envelopes (completion, title, active) all carry the end's seq.
    ended = numbered.encode(finished(7, "all"))
    assert [f[1]["data"]["type"] for f in ended] == ["chat:completion", "chat:active"]
    assert {f[1]["seq"] for f in ended} == {7}


def test_nadoo_seq_only_when_asked_and_the_index_goes_on_after_priming() -> None:
    plain = nadoo.Encoder(clock=lambda: NOW)
    assert "seq" not in json.loads(plain.encode(delta(1))[0])
    numbered = nadoo.Encoder(clock=lambda: NOW, seq=True)
    for event in (started(), delta(1), delta(2)):  # what the client already has
        numbered.encode(event)
    frame = json.loads(numbered.encode(delta(3))[0])
    assert (frame["type"], frame["index"], frame["seq"]) == ("text-delta", 2, 3)
    end = json.loads(numbered.encode(finished(4, "w1 w2 w3"))[0])
    assert (end["type"], end["seq"]) == ("response_end", 4)
    snapshot = json.loads(numbered.encode(ReplySnapshot("c1", "m1", 5, "x", True, False))[0])
    assert {k: snapshot[k] for k in ("type", "content", "done", "exact", "seq")} == {
        "type": "snapshot",
        "content": "x",
        "done": True,
        "exact": False,
        "seq": 5,
    }


def test_ragflow_cumulative_answer_is_right_after_priming_and_after_a_snapshot() -> None:
    encoder = ragflow.AnswerEncoder("cumulative", seq=True)
    encoder.expect("m1")
    for event in (started(), delta(1), delta(2)):
        encoder.encode(event)
    (chunk,) = encoder.encode(delta(3))
    data = json.loads(chunk)["data"]
    assert (data["answer"], data["seq"]) == ("w1 w2 w3 ", 3)
    (snap,) = encoder.encode(ReplySnapshot("c1", "m1", 3, "stored text ", False, False))
    assert json.loads(snap)["data"]["snapshot"] is True
    (after,) = encoder.encode(delta(4))
    assert json.loads(after)["data"]["answer"] == "stored text w4 "
    plain = ragflow.AnswerEncoder("cumulative")
    assert "seq" not in json.loads(plain.encode(delta(1))[0])["data"]


# -- the SSE mirror ---------------------------------------------------------------------
def test_reply_frames_carry_the_seq_on_the_last_frame_only() -> None:
    raw = mirror.reply_frames(finished(7, "done"))[0]
    lines = raw.decode().split("\n\n")
    assert lines[-2].startswith("id: 7\n") and all("id:" not in part for part in lines[:-2])
    payloads = SSEParser().feed(raw)
    assert [json.loads(p)["data"]["type"] for p in payloads] == ["chat:completion", "chat:active"]
    assert (
        mirror.after_of("7") == 7 and mirror.after_of("x") is None and mirror.after_of(None) is None
    )


def test_cursor_tracks_running_replies_and_round_trips() -> None:
    opened_ms = int(NOW * 1000) - 5000
    cursor = mirror.Cursor(opened_ms)
    cursor.saw(started())  # started at NOW: the newest start the stream has sent
    cursor.saw(delta(1))
    cursor.saw(TextDelta("c2", "id.with/odd-chars", 40, "x"))
    raw = cursor.id()
    assert "\n" not in raw and "\r" not in raw
    parsed = mirror.cursor_of(raw)
    assert parsed is not None and parsed.ms == int(NOW * 1000)
    assert parsed.seqs == {"m1": 1, "id.with/odd-chars": 40}
    cursor.saw(finished(2, "w1"))
    assert mirror.cursor_of(cursor.id()).seqs == {"id.with/odd-chars": 40}  # type: ignore[union-attr]


def test_cursor_decides_what_a_resume_sends() -> None:
    cursor = mirror.Cursor(1000, {"m1": 5})
    assert cursor.wants("m1", 900, True) == 5  # seen running: after its seq
    assert cursor.wants("m2", 2000, False) == -1  # began after the newest start sent
    assert cursor.wants("m5", 900, True) == -1  # running, not named: all of it
    assert cursor.wants("m3", 1000, False) is None  # its start was sent, it ended: seen whole
    assert cursor.wants("m4", 500, False) is None  # over before


def test_a_stream_behind_names_only_what_its_client_got() -> None:
    """Times come from the events, not from when the stream wrote them."""
    cursor = mirror.Cursor(1000)
    cursor.saw(ReplyStarted("c1", "old", 0, "u", None, "m", 2.0))
    cursor.saw(TextDelta("c1", "old", 1, "x"))
    # Written much later, but a reply that started at 2.5 s was never sent.
    assert cursor.wants("unseen", 2500, False) == -1


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "zz..",
        "abc.1",
        "1.-x",
        "1." + "a" * 5000,
        "-5",
        # Numbers this stream never writes: past 2**53, or not plain base-36 digits.
        "z" * 4090,
        "2gosa7pa2gw",
        "1." + "z" * 4000 + "-m",
        "1.2gosa7pa2gw-m",
        "1_0",
        "1.1_0-m",
    ],
)
def test_a_cursor_that_is_not_one_is_a_fresh_stream(raw: str) -> None:
    assert mirror.cursor_of(raw) is None


def test_a_cursor_reads_every_number_it_can_write() -> None:
    largest = mirror.MAX_NUMBER - 1
    cursor = mirror.Cursor(largest, {"m": largest, "o": 0})
    assert mirror.cursor_of(cursor.id()) == cursor


def test_cursor_names_at_most_a_bounded_number_of_replies() -> None:
    cursor = mirror.Cursor()
    for i in range(mirror.MAX_CURSOR_REPLIES + 5):
        cursor.saw(TextDelta("c", f"m{i}", 1, "x"))
    assert len(cursor.seqs) == mirror.MAX_CURSOR_REPLIES
    assert "m0" not in cursor.seqs and f"m{mirror.MAX_CURSOR_REPLIES + 4}" in cursor.seqs
