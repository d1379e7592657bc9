"""`tree.grow` (a turn's messages added to a stored, consistent history, without
walking it) gives what `tree.merge` (the whole tree copied and checked) gives, on
random trees and random turns; and it leaves its argument alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat import tree


@st.composite
def stored_histories(draw: st.DrawFn) -> dict[str, Any]:
    """A consistent history as the store gives it: each message under an earlier one
    (or a root), childrenIds derived in the order the messages were written."""
    size = draw(st.integers(0, 25))
    messages: dict[str, dict[str, Any]] = {}
    for index in range(size):
        parent = draw(st.sampled_from([None, *messages])) if messages else None
        role = draw(st.sampled_from(["user", "assistant"]))
        messages[f"m{index}"] = {"id": f"m{index}", "parentId": parent, "childrenIds": [],
                                 "role": role, "content": f"text {index}", "meta": {"n": [index]}}  # fmt: skip
        if parent is not None:
            messages[parent]["childrenIds"].append(f"m{index}")
    current = draw(st.sampled_from(list(messages))) if messages else None
    return {"messages": messages, "currentId": current}


@st.composite
def turns(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A stored history and what a turn writes into it: a new question under any
    message (or an existing one asked again), then one to three replies under it,
    new or written over an assistant message already answering it."""
    history = draw(stored_histories())
    messages = history["messages"]
    writes: list[dict[str, Any]] = []
    asked_again = [mid for mid, m in messages.items() if m["role"] == "user"]
    if asked_again and draw(st.booleans()):
        question = draw(st.sampled_from(asked_again))
    else:
        question = "q-new"
        parent = draw(st.sampled_from([None, *messages])) if messages else None
        writes.append({"id": question, "parentId": parent, "role": "user", "content": "new?",
                       "files": [{"name": "a.txt"}]})  # fmt: skip
    answers = [mid for mid, m in messages.items()
               if m["role"] == "assistant" and m["parentId"] == question]  # fmt: skip
    for index in range(draw(st.integers(1, 3))):
        mid = answers.pop() if answers and draw(st.booleans()) else f"r-new-{index}"
        writes.append({"id": mid, "parentId": question, "role": "assistant", "content": "",
                       "model": "m", "done": False})  # fmt: skip
    return history, writes


@settings(max_examples=300, deadline=None)
@given(turns())
def test_grow_gives_what_merge_gives(turn: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    history, writes = turn
    before = copy.deepcopy(history)
    current = writes[-1]["id"]
    grown = tree.grow(history, writes, current)
    merged = tree.merge(history, {"messages": {m["id"]: m for m in writes}, "currentId": current})
    assert history == before  # its argument untouched
    assert grown["currentId"] == merged["currentId"] == current
    assert grown["messages"].keys() == merged["messages"].keys()
    written = {m["id"] for m in writes}
    for mid, message in merged["messages"].items():
        if mid in written:
            # merge keeps a rewritten message's old fields, grow replaces it whole (the
            # turn writes it whole either way): where it sits in the tree agrees.
            for key in ("parentId", "childrenIds"):
                assert grown["messages"][mid][key] == message[key], (mid, key)
            for key, value in dict(writes_of(writes, mid)).items():
                assert grown["messages"][mid][key] == value
        else:
            assert grown["messages"][mid] == message, mid
    tree.validate(grown)


def writes_of(writes: list[dict[str, Any]], mid: str) -> dict[str, Any]:
    return next(m for m in writes if m["id"] == mid)


def test_grow_copies_what_it_adds() -> None:
    history = {"messages": {"u1": {"id": "u1", "parentId": None, "childrenIds": []}},
               "currentId": "u1"}  # fmt: skip
    added = {"id": "a1", "parentId": "u1", "files": [{"name": "x"}]}
    grown = tree.grow(history, [added], "a1")
    added["files"].append({"name": "later"})
    assert grown["messages"]["a1"]["files"] == [{"name": "x"}]
    assert grown["messages"]["u1"]["childrenIds"] == ["a1"]
    assert history["messages"]["u1"]["childrenIds"] == []


@pytest.mark.parametrize(
    ("added", "current", "reason"),
    [
        ({"id": "a1", "parentId": "nowhere"}, "a1", "parent 'nowhere' does not exist"),
        ({"id": "u1", "parentId": "x"}, "u1", "exists under None, not 'x'"),
        ({"id": "", "parentId": None}, "u1", "a new message needs a string id"),
        ({"id": "a1", "parentId": "u1"}, "gone", "currentId names a message that does not exist"),
    ],
)
def test_grow_refuses_what_would_break_the_tree(
    added: dict[str, Any], current: str, reason: str
) -> None:
    history = {"messages": {"u1": {"id": "u1", "parentId": None, "childrenIds": []}},
               "currentId": "u1"}  # fmt: skip
    with pytest.raises(tree.TreeError, match=reason):
        tree.grow(history, [added], current)


def test_grow_keeps_a_value_nested_too_deep_a_tree_error() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    history = {"messages": {}, "currentId": None}
    with pytest.raises(tree.TreeError, match="nested too deeply"):
        tree.grow(history, [{"id": "u1", "parentId": None, "content": deep}], "u1")
