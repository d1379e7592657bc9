"""Pure functions over an Open WebUI chat history tree.

    history = {"currentId": "m3" | None,
               "messages": {"m1": {"id": "m1", "parentId": None, "childrenIds": ["m2"],
                                   "role": "user", "content": "hi", ...any other fields},
                            ...}}

`parentId` is the truth; `childrenIds` are derived from it (keeping the
order a client gave where it agrees).  Every function returns a new history
and never mutates its argument.  All are O(number of messages), but `grow`,
which adds a turn's few messages to a history already consistent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from gateway import jsonwire

P = ParamSpec("P")
R = TypeVar("R")


class TreeError(ValueError):
    """A history that cannot be made consistent; names the message at fault."""

    def __init__(self, message_id: str | None, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        super().__init__(f"message {message_id!r}: {reason}" if message_id is not None else reason)


def _current_of(history: Mapping[str, Any]) -> Any:
    if "currentId" in history:
        return history["currentId"]
    return history.get("current_id")


def _copying(function: Callable[P, R]) -> Callable[P, R]:
    """A function that deep-copies what a client sent: a value nested past Python's
    recursion limit (a JSON body may nest about 1,000 deep) is a TreeError, not a crash."""

    @functools.wraps(function)
    def copying(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except RecursionError:
            raise TreeError(None, "a value in the history is nested too deeply") from None

    return copying


@_copying
def normalize(history: Mapping[str, Any]) -> dict[str, Any]:
    """A consistent copy: ids filled in, childrenIds derived, parents and currentId checked."""
    raw = history.get("messages") or {}
    if not isinstance(raw, Mapping):
        raise TreeError(None, "history.messages must be an object")
    messages: dict[str, dict[str, Any]] = {}
    for key, message in raw.items():
        if not isinstance(message, Mapping):
            raise TreeError(str(key), "must be an object")
        copied = jsonwire.copy(dict(message))
        mid = copied.setdefault("id", key)
        if mid != key:
            raise TreeError(str(key), f"its id {mid!r} differs from its key")
        parent = copied.setdefault("parentId", None)
        if parent is not None and not isinstance(parent, str):
            raise TreeError(str(key), "its parentId must be a message id (a string) or null")
        messages[key] = copied
    children: dict[str, list[str]] = {mid: [] for mid in messages}
    for mid, message in messages.items():
        parent = message["parentId"]
        if parent is None:
            continue
        if parent not in messages:
            raise TreeError(mid, f"parent {parent!r} does not exist")
        children[parent].append(mid)
    for mid, message in messages.items():
        actual = children[mid]
        hinted = message.get("childrenIds")
        order: list[str] = []
        seen: set[str] = set()
        if isinstance(hinted, list):
            actual_set = set(actual)
            for child in hinted:
                if isinstance(child, str) and child in actual_set and child not in seen:
                    order.append(child)
                    seen.add(child)
        order += [child for child in actual if child not in seen]
        message["childrenIds"] = order
    _check_acyclic(messages)
    current = _current_of(history)
    if current is not None and not isinstance(current, str):
        raise TreeError(None, "currentId must be a message id (a string) or null")
    if current is not None and current not in messages:
        raise TreeError(str(current), "currentId names a message that does not exist")
    if current is None and messages:
        leaves = [mid for mid, m in messages.items() if not m["childrenIds"]]
        current = leaves[-1] if leaves else None
    extra = {
        k: jsonwire.copy(v)
        for k, v in history.items()
        if k not in ("messages", "currentId", "current_id")
    }
    return {**extra, "messages": messages, "currentId": current}


def _check_acyclic(messages: Mapping[str, Mapping[str, Any]]) -> None:
    parents = {mid: message["parentId"] for mid, message in messages.items()}
    for link in closing_links(parents):
        raise TreeError(parents[link], "is part of a parentId cycle")


def closing_links(parents: Mapping[str, str | None]) -> list[str]:
    """The messages whose parentId closes a cycle, one per cycle: where a walk up
    from each message (in order) meets its own trail.  Every parent named is in
    `parents`, or None.  Nodes are coloured so the whole walk stays O(n)."""
    links: list[str] = []
    done: set[str] = set()
    for start in parents:
        trail: list[str] = []
        on_trail: set[str] = set()
        node: str | None = start
        while node is not None and node not in done:
            if node in on_trail:
                links.append(trail[-1])  # its parent is on the trail
                break
            trail.append(node)
            on_trail.add(node)
            node = parents[node]
        done.update(trail)
    return links


@_copying
def merge(stored: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a partial history into a stored one, message by message, field by field.

    Messages absent from the update are kept; fields absent from an updated
    message are kept (a partial `{childrenIds: [...]}` does not wipe content).
    """
    base = normalize(stored)
    messages = base["messages"]
    incoming = update.get("messages") or {}
    if not isinstance(incoming, Mapping):
        raise TreeError(None, "history.messages must be an object")
    for key, fields in incoming.items():
        if not isinstance(fields, Mapping):
            raise TreeError(str(key), "must be an object")
        merged = dict(messages.get(key, {"id": key}))
        merged.update(jsonwire.copy(dict(fields)))
        messages[key] = merged
    result: dict[str, Any] = {**base, "messages": messages}
    update_current = _current_of(update)
    if update_current is not None:
        result["currentId"] = update_current
    for key, value in update.items():
        if key not in ("messages", "currentId", "current_id"):
            result[key] = jsonwire.copy(value)
    return normalize(result)


@_copying
def grow(
    history: Mapping[str, Any], added: Sequence[Mapping[str, Any]], current_id: str
) -> dict[str, Any]:
    """A consistent `history` (as the store gives it) with `added` put in, in order:
    a new message as a leaf under its parent, an existing one replaced where it is
    (its children kept).  Unlike `merge`, the stored messages are neither copied nor
    checked again, only the mapping that holds them: a turn in a chat of thousands
    of messages costs what its own messages cost, not a walk of the whole tree
    (bench/RESULTS.md)."""
    messages = dict(history.get("messages") or {})
    for message in added:
        copied = jsonwire.copy(dict(message))
        mid = copied.get("id")
        if not isinstance(mid, str) or not mid:
            raise TreeError(None, "a new message needs a string id")
        parent = copied.setdefault("parentId", None)
        old = messages.get(mid)
        if old is not None:
            if old.get("parentId") != parent:
                raise TreeError(mid, f"exists under {old.get('parentId')!r}, not {parent!r}")
            copied["childrenIds"] = list(old.get("childrenIds") or [])
        else:
            if parent is not None and parent not in messages:
                raise TreeError(mid, f"parent {parent!r} does not exist")
            copied["childrenIds"] = []
            if parent is not None:
                above = dict(messages[parent])
                above["childrenIds"] = [*(above.get("childrenIds") or []), mid]
                messages[parent] = above
        messages[mid] = copied
    if current_id not in messages:
        raise TreeError(current_id, "currentId names a message that does not exist")
    return {**history, "messages": messages, "currentId": current_id}


@dataclass(frozen=True, slots=True)
class Removal:
    """What deleting a message does to a consistent history (Open WebUI's web app
    does the same to its copy, then asks the server to: `deleteMessage`)."""

    removed: list[str]  # the message and its children
    moved: dict[str, str | None]  # each grandchild: its new parent (the message's)
    current_id: str | None


def remove(history: Mapping[str, Any], message_id: str) -> Removal:
    """The message and its children go; their children (the grandchildren) move up
    under the message's parent; the current message, if it went, becomes the
    deepest last child under that parent (the parent itself when none is left)."""
    messages = history["messages"]
    if message_id not in messages:
        raise TreeError(message_id, "does not exist")
    parent = messages[message_id].get("parentId")
    children = list(messages[message_id].get("childrenIds") or [])
    removed = [message_id, *children]
    moved = {
        grandchild: parent
        for child in children
        for grandchild in messages[child].get("childrenIds") or []
    }
    current = _current_of(history)
    if current in removed:
        current = _deepest_under(messages, parent, set(removed), moved)
    return Removal(removed, moved, current)


def _deepest_under(
    messages: Mapping[str, Mapping[str, Any]],
    parent: str | None,
    removed: set[str],
    moved: Mapping[str, str | None],
) -> str | None:
    """Following last children down from `parent` once the removal is done; O(n)."""
    moved_under: dict[str | None, list[str]] = {}
    for child, above in moved.items():
        moved_under.setdefault(above, []).append(child)

    def children_of(mid: str | None) -> list[str]:
        if mid is None:
            kept = [m for m, message in messages.items() if message.get("parentId") is None]
        else:
            kept = list(messages[mid].get("childrenIds") or [])
        return [child for child in kept if child not in removed] + moved_under.get(mid, [])

    node = parent
    seen: set[str | None] = set()
    while (below := children_of(node)) and node not in seen:
        seen.add(node)
        node = below[-1]
    return node


def add_message(
    history: Mapping[str, Any], message: Mapping[str, Any], parent_id: str | None
) -> dict[str, Any]:
    base = normalize(history)
    mid = message.get("id")
    if not isinstance(mid, str) or not mid:
        raise TreeError(None, "a new message needs a string id")
    if mid in base["messages"]:
        raise TreeError(mid, "already exists")
    if parent_id is not None and parent_id not in base["messages"]:
        raise TreeError(mid, f"parent {parent_id!r} does not exist")
    base["messages"][mid] = {
        **jsonwire.copy(dict(message)),
        "parentId": parent_id,
        "childrenIds": [],
    }
    if parent_id is not None:
        base["messages"][parent_id]["childrenIds"].append(mid)
    base["currentId"] = mid
    return base


def path_to(history: Mapping[str, Any], message_id: str) -> list[dict[str, Any]]:
    """The messages from the root down to `message_id`, root first."""
    messages = history.get("messages") or {}
    if message_id not in messages:
        raise TreeError(message_id, "does not exist")
    path: list[dict[str, Any]] = []
    seen: set[str] = set()
    node: str | None = message_id
    while node is not None:
        if node in seen:
            raise TreeError(node, "is part of a parentId cycle")
        if node not in messages:
            raise TreeError(
                path[-1]["id"] if path else message_id, f"parent {node!r} does not exist"
            )
        seen.add(node)
        path.append(messages[node])
        node = messages[node].get("parentId")
    path.reverse()
    return path


def current_path(history: Mapping[str, Any]) -> list[dict[str, Any]]:
    current = _current_of(history)
    return path_to(history, current) if current is not None else []


def last_user_message_id(history: Mapping[str, Any]) -> str | None:
    for message in reversed(current_path(history)):
        if message.get("role") == "user":
            return str(message["id"])
    last = None
    for mid, message in (history.get("messages") or {}).items():
        if message.get("role") == "user":
            last = str(mid)
    return last


def validate(history: Mapping[str, Any]) -> None:
    """Raise TreeError unless the history is already consistent."""
    fixed = normalize(history)
    for mid, message in (history.get("messages") or {}).items():
        given = message.get("childrenIds")
        if given is None or sorted(given) != sorted(fixed["messages"][mid]["childrenIds"]):
            raise TreeError(mid, "childrenIds do not match the messages whose parentId points here")
        if len(set(given)) != len(given):
            raise TreeError(mid, "childrenIds has duplicates")
