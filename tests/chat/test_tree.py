"""The history tree: example rules, then properties over random trees and partial updates."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat import tree


def history(
    *pairs: tuple[str, str | None], current: str | None = None, **fields: Any
) -> dict[str, Any]:
    messages = {
        mid: {"id": mid, "parentId": parent, "role": "user", "content": f"c-{mid}", **fields}
        for mid, parent in pairs
    }
    return {"messages": messages, "currentId": current}


def test_childrenids_are_derived_and_current_id_alias() -> None:
    got = tree.normalize(
        {"current_id": "b", "messages": {"a": {"parentId": None}, "b": {"parentId": "a"}}}
    )
    assert got["currentId"] == "b" and "current_id" not in got
    assert got["messages"]["a"]["childrenIds"] == ["b"] and got["messages"]["a"]["id"] == "a"


def test_childrenids_order_hint_is_kept_and_wrong_ids_dropped() -> None:
    h = history(("r", None), ("x", "r"), ("y", "r"))
    h["messages"]["r"]["childrenIds"] = ["y", "ghost", "x", "y"]
    assert tree.normalize(h)["messages"]["r"]["childrenIds"] == ["y", "x"]


def test_unknown_parent_cycle_and_unknown_current_are_refused() -> None:
    with pytest.raises(tree.TreeError, match=r"'b'.*'zz' does not exist"):
        tree.normalize(history(("a", None), ("b", "zz")))
    with pytest.raises(tree.TreeError, match="cycle"):
        tree.normalize(history(("a", "b"), ("b", "a")))
    with pytest.raises(tree.TreeError, match="currentId"):
        tree.normalize(history(("a", None), current="nope"))
    with pytest.raises(tree.TreeError, match="differs"):
        tree.normalize({"messages": {"a": {"id": "b"}}})


def test_missing_current_id_is_the_last_leaf() -> None:
    assert tree.normalize(history(("a", None), ("b", "a"), ("c", "a")))["currentId"] == "c"


def test_partial_update_keeps_content_and_adds_a_branch() -> None:
    stored = tree.normalize(history(("u", None), ("a", "u"), current="a"))
    update = {
        "currentId": "a2",
        "messages": {
            "u": {"childrenIds": ["a2", "a"]},
            "a2": {"parentId": "u", "role": "assistant", "content": "B"},
        },
    }
    merged = tree.merge(stored, update)
    assert merged["messages"]["u"]["content"] == "c-u"
    assert merged["messages"]["u"]["childrenIds"] == ["a2", "a"]
    assert [m["id"] for m in tree.current_path(merged)] == ["u", "a2"]
    assert stored["messages"]["u"]["childrenIds"] == ["a"], "inputs are never mutated"


def test_add_message_path_and_last_user_message() -> None:
    h = tree.normalize(history(("u", None), current="u"))
    h = tree.add_message(h, {"id": "a", "role": "assistant", "content": ""}, "u")
    assert h["currentId"] == "a" and h["messages"]["u"]["childrenIds"] == ["a"]
    assert [m["id"] for m in tree.path_to(h, "a")] == ["u", "a"]
    assert tree.last_user_message_id(h) == "u"
    with pytest.raises(tree.TreeError):
        tree.add_message(h, {"id": "a"}, "u")
    with pytest.raises(tree.TreeError):
        tree.add_message(h, {"id": "z"}, "nope")


def test_validate() -> None:
    good = tree.normalize(history(("a", None), ("b", "a")))
    tree.validate(good)
    good["messages"]["a"]["childrenIds"] = []
    with pytest.raises(tree.TreeError, match="childrenIds"):
        tree.validate(good)


def test_two_thousand_messages_is_linear() -> None:
    pairs = [(f"m{i}", f"m{i - 1}" if i else None) for i in range(2000)]
    h = tree.normalize(history(*pairs))
    assert len(tree.current_path(h)) == 2000


# -- properties ------------------------------------------------------------
@st.composite
def trees(draw: st.DrawFn, prefix: str = "m", min_size: int = 0) -> dict[str, Any]:
    size = draw(st.integers(min_size, 25))
    messages: dict[str, Any] = {}
    for i in range(size):
        parent = draw(st.one_of(st.none(), st.sampled_from(sorted(messages)))) if messages else None
        extra = draw(
            st.dictionaries(
                st.sampled_from(["model", "timestamp", "done", "x"]),
                st.integers() | st.text(max_size=3),
                max_size=2,
            )
        )
        messages[f"{prefix}{i}"] = {
            "parentId": parent,
            "role": draw(st.sampled_from(["user", "assistant"])),
            "content": draw(st.text(max_size=5)),
            **extra,
        }
    current = draw(st.sampled_from(sorted(messages))) if messages else None
    return tree.normalize({"messages": messages, "currentId": current})


@st.composite
def stored_and_update(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    stored = draw(trees())
    ids = sorted(stored["messages"])
    update: dict[str, Any] = {}
    for mid in draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []:
        fields = draw(st.sets(st.sampled_from(["content", "childrenIds", "model", "role"])))
        patch: dict[str, Any] = {}
        for name in fields:
            patch[name] = (
                draw(st.lists(st.sampled_from(ids), max_size=3))
                if name == "childrenIds"
                else draw(st.text(max_size=4))
            )
        update[mid] = patch
    known = list(ids)
    for j in range(draw(st.integers(0, 5))):
        parent = draw(st.one_of(st.none(), st.sampled_from(known))) if known else None
        update[f"n{j}"] = {"parentId": parent, "role": "user", "content": "new"}
        known.append(f"n{j}")
    body: dict[str, Any] = {"messages": update}
    if known and draw(st.booleans()):
        body[draw(st.sampled_from(["currentId", "current_id"]))] = draw(st.sampled_from(known))
    return stored, body


def assert_consistent(h: dict[str, Any]) -> None:
    messages = h["messages"]
    for mid, message in messages.items():
        assert message["parentId"] is None or message["parentId"] in messages
        expected = {c for c, m in messages.items() if m["parentId"] == mid}
        assert set(message["childrenIds"]) == expected
        assert len(message["childrenIds"]) == len(expected)
    tree.validate(h)


@settings(max_examples=200, deadline=None)
@given(stored_and_update())
def test_merge_never_loses_or_dangles(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    stored, update = case
    merged = tree.merge(stored, update)
    assert set(stored["messages"]) | set(update["messages"]) == set(merged["messages"])
    assert_consistent(merged)
    for mid, patch in update["messages"].items():
        for name, value in patch.items():
            if name != "childrenIds":
                assert merged["messages"][mid][name] == value
        if mid in stored["messages"]:
            for name, value in stored["messages"][mid].items():
                if name not in patch and name != "childrenIds":
                    assert merged["messages"][mid][name] == value, (
                        "fields absent from an update are kept"
                    )


@settings(max_examples=200, deadline=None)
@given(trees())
def test_paths_are_root_to_leaf_and_normalize_is_idempotent(h: dict[str, Any]) -> None:
    assert tree.normalize(h) == h
    for mid in h["messages"]:
        path = tree.path_to(h, mid)
        assert path[0]["parentId"] is None and path[-1]["id"] == mid
        for parent, child in itertools.pairwise(path):
            assert child["parentId"] == parent["id"]
    current = tree.current_path(h)
    if h["currentId"] is not None:
        assert current[-1]["id"] == h["currentId"]


def test_remove_takes_the_children_and_moves_the_grandchildren_up() -> None:
    # a ─ b ─ c ─ d        removing b: b and c go, d moves under a
    #       └ e            (e, b's other child, goes too)
    h = tree.normalize(history(("a", None), ("b", "a"), ("c", "b"), ("d", "c"), ("e", "b")))
    removal = tree.remove({**h, "currentId": "d"}, "b")
    assert removal.removed == ["b", "c", "e"]
    assert removal.moved == {"d": "a"}
    assert removal.current_id == "d"  # still there
    # The current message removed: the deepest last child under the parent, once
    # the removal is done (d, moved up), else the parent itself.
    assert tree.remove({**h, "currentId": "e"}, "b").current_id == "d"
    assert tree.remove({**h, "currentId": "d"}, "d").current_id == "c"
    # A root removed: its replies' replies become roots.
    assert tree.remove({**h, "currentId": "d"}, "a") == tree.Removal(
        ["a", "b"], {"c": None, "e": None}, "d"
    )
    with pytest.raises(tree.TreeError):
        tree.remove(h, "zz")
