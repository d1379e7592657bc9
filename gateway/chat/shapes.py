"""Open WebUI's chat shapes ↔ the store's rows.

A chat as Open WebUI sends and returns it (`ChatResponse.chat`)::

    {"id", "title", "models": [...], "params": {...}, "timestamp": <ms>,
     "history": {"currentId": "m2",
                 "messages": {"m1": {"id", "parentId", "childrenIds", "role", "content", ...}}},
     "messages": [<the current path, root first>],  ...any other keys}

In the store: one `ChatRecord` (title, current_id, and every other top-level
key in `extra`) and one `MessageRecord` per message (parent_id, role,
content, done; every other field in `fields`).  `childrenIds` are never
stored: they are derived from `parentId`, in insertion order.  The flat
`messages` list is derived from the tree too, so it can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.chat import tree
from gateway.store.records import ChatRecord, MessageRecord

# Keys of the chat object that have columns or are derived.
_CHAT_OWN_KEYS = frozenset({"id", "title", "history", "messages"})
_MESSAGE_OWN_KEYS = frozenset({"id", "parentId", "childrenIds", "role", "content", "done"})


def message_record(chat_id: str, message: Mapping[str, Any]) -> MessageRecord:
    content = message.get("content")
    fields = {k: v for k, v in message.items() if k not in _MESSAGE_OWN_KEYS}
    if content is not None and not isinstance(content, str):
        # Multi-part content (a list) is kept as sent, in fields.
        fields["content"] = content
        content = ""
    done = message.get("done")
    return MessageRecord(
        chat_id=chat_id,
        id=str(message["id"]),
        parent_id=message.get("parentId"),
        role=str(message.get("role") or "user"),
        content=content or "",
        done=done if isinstance(done, bool) else None,
        fields=fields,
    )


def message_dict(record: MessageRecord, children: list[str]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": record.id,
        "parentId": record.parent_id,
        "childrenIds": children,
        "role": record.role,
        "content": record.content,
        **record.fields,
    }
    if record.done is not None:
        message["done"] = record.done
    return message


def history_of(chat: ChatRecord, records: Iterable[MessageRecord]) -> dict[str, Any]:
    """The stored rows as a tree.  Every write checks the tree, but two edits
    written at once on two replicas could each be right alone and together
    store a parentId cycle: read, a message whose parent is missing or
    closes a cycle is a root, so a chat always reads (and can be edited again)."""
    ordered = list(records)
    parents = _parents(ordered)
    children: dict[str, list[str]] = {record.id: [] for record in ordered}
    for record in ordered:
        parent = parents[record.id]
        if parent is not None:
            children[parent].append(record.id)
    messages = {record.id: message_dict(record, children[record.id]) for record in ordered}
    for record in ordered:
        if parents[record.id] != record.parent_id:
            messages[record.id]["parentId"] = None
    current = chat.current_id if chat.current_id in messages else None
    if current is None and ordered:
        leaves = [record.id for record in ordered if not children[record.id]]
        current = leaves[-1] if leaves else None
    return {"messages": messages, "currentId": current}


def _parents(ordered: list[MessageRecord]) -> dict[str, str | None]:
    """Each message's parent; None for one whose parent is missing, and for the
    link that closes a parentId cycle (`tree.closing_links`)."""
    parents = {record.id: record.parent_id for record in ordered}
    for mid, parent in parents.items():
        if parent is not None and parent not in parents:
            parents[mid] = None
    for link in tree.closing_links(parents):
        parents[link] = None
    return parents


def chat_object(chat: ChatRecord, records: Iterable[MessageRecord]) -> dict[str, Any]:
    history = history_of(chat, records)
    flat = tree.current_path(history) if history["currentId"] else []
    return {
        **chat.extra,
        "id": chat.id,
        "title": chat.title,
        "history": history,
        "messages": flat,
    }


def chat_response(chat: ChatRecord, records: Iterable[MessageRecord]) -> dict[str, Any]:
    """Open WebUI's `ChatResponse`."""
    return {
        "id": chat.id,
        "user_id": chat.user_id,
        "title": chat.title,
        "chat": chat_object(chat, records),
        "updated_at": chat.updated_at,
        "created_at": chat.created_at,
        "share_id": chat.share_id,
        "archived": chat.archived,
        "pinned": chat.pinned,
        "meta": chat.meta,
        "folder_id": chat.folder_id,
    }


def list_item(chat: ChatRecord) -> dict[str, Any]:
    return {
        "id": chat.id,
        "title": chat.title,
        "updated_at": chat.updated_at,
        "created_at": chat.created_at,
        "last_read_at": chat.last_read_at,
    }


def chat_extra(chat_obj: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level keys of a chat object that have no column of their own."""
    return {k: v for k, v in chat_obj.items() if k not in _CHAT_OWN_KEYS and k != "currentId"}
