"""Chats as their owners see them: create, read, merge updates, list, organise.

Every method takes the caller's `Principal` and raises `NotFound` for a chat
that does not exist *or* is not theirs (Open WebUI's frontend logs users out
on 401, and no one should learn which ids exist).  Replies are not written
here: `runner.py` ends each one (and the placeholder of one never started),
`running.py`'s start-up recovery those a crash left unfinished.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from gateway import offloop
from gateway.bus import Locks
from gateway.bus.memory import LocalLocks
from gateway.chat import tree
from gateway.chat.shapes import chat_extra, chat_response, history_of, message_record
from gateway.commands import MAX_ID_CHARS
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.store import ChatStore
from gateway.store.records import SHARED_BY, ChatRecord, MessageRecord

PAGE_SIZE = 60  # Open WebUI's page size for chat lists
DEFAULT_TITLE = "New Chat"
# A chat titled so has no title of its own yet: its first reply gives it one.
DEFAULT_TITLES = ("", DEFAULT_TITLE)
TITLE_CHARS = 60
# A tree of more messages is checked and merged in a thread: pure Python still,
# but the loop gets its turns (every 5 ms) instead of waiting out a whole walk
# of a chat of tens of thousands of messages (about 1 s for 100,000).
OFF_LOOP_MESSAGES = 2_000

T = TypeVar("T")


async def tree_work(size: int, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on a tree of `size` messages: in a thread past `OFF_LOOP_MESSAGES`."""
    return await offloop.run_if(size > OFF_LOOP_MESSAGES, work, *args)


async def shaped_history(chat: ChatRecord, records: list[MessageRecord]) -> dict[str, Any]:
    """`history_of` (the stored rows as the web app's tree), off the loop for a long chat."""
    return await tree_work(len(records), history_of, chat, records)


def title_for(chat: ChatRecord, history: Mapping[str, Any]) -> str | None:
    """The title a reply would give the chat: its first user message, if it has no title."""
    if chat.title not in DEFAULT_TITLES:
        return None
    for message in (history.get("messages") or {}).values():
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str) and content.strip():
            text = " ".join(content.split())
            return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
    return None


def now_s() -> int:
    return int(time.time())


def new_chat(user_id: str, model: str) -> ChatRecord:
    """A chat record not stored yet, titled "New Chat", for `model`."""
    created = now_s()
    return ChatRecord(
        id=str(uuid.uuid4()),
        user_id=user_id,
        title=DEFAULT_TITLE,
        current_id=None,
        created_at=created,
        updated_at=created,
        extra={"timestamp": created * 1000, "models": [model]},
    )


def _history_of_request(chat_obj: Mapping[str, Any]) -> dict[str, Any]:
    """The history a client sent; older clients send only the flat `messages` list."""
    history = chat_obj.get("history")
    if isinstance(history, Mapping) and history.get("messages"):
        return dict(history)
    flat = chat_obj.get("messages")
    if isinstance(flat, list) and flat:
        messages: dict[str, Any] = {}
        parent: str | None = None
        for index, message in enumerate(flat):
            if not isinstance(message, Mapping):
                raise BadRequest(f"chat.messages[{index}] must be an object")
            mid = str(message.get("id") or uuid.uuid4())
            messages[mid] = {**message, "id": mid, "parentId": message.get("parentId", parent)}
            parent = mid
        return {"messages": messages, "currentId": parent}
    return dict(history) if isinstance(history, Mapping) else {"messages": {}, "currentId": None}


def _check_ids(history: Mapping[str, Any]) -> None:
    """BadRequest for a message id, `parentId` or `currentId` a client sends past
    MAX_ID_CHARS: the bound a reply's ids have (`turns.check_ids`), so that no chat
    is saved that a turn would then refuse, and no error echoes a megabyte id.
    Histories already stored are read as they are."""
    messages = history.get("messages")
    named: list[Any] = [history.get("currentId"), history.get("current_id")]
    if isinstance(messages, Mapping):
        for key, message in messages.items():
            named.append(key)
            if isinstance(message, Mapping):
                named += (message.get("id"), message.get("parentId"))
    if any(isinstance(value, str) and len(value) > MAX_ID_CHARS for value in named):
        raise BadRequest(f"A message id has at most {MAX_ID_CHARS} characters")


def normalized(history: Mapping[str, Any]) -> dict[str, Any]:
    """A new chat's history, checked (`_check_ids`, `tree.normalize`)."""
    _check_ids(history)
    try:
        return tree.normalize(history)
    except tree.TreeError as exc:
        raise BadRequest(f"Inconsistent chat history: {exc}") from None


def _merged_update(stored: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The client's `update` checked (`_check_ids`) and merged into the stored tree."""
    _check_ids(update)
    try:
        return tree.merge(stored, update)
    except tree.TreeError as exc:
        raise BadRequest(f"Inconsistent chat history: {exc}") from None


def _chat_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping) or not isinstance(body.get("chat"), Mapping):
        raise BadRequest("Body must be an object with a 'chat' object")
    chat: Mapping[str, Any] = body["chat"]
    return chat


# Past this page every list is empty; the bound keeps OFFSET inside a 64-bit
# integer (SQLite raises on overflow) for any number a client sends.
MAX_PAGE = 2**31


def page_bounds(page: int | None) -> tuple[int, int | None]:
    if page is None:
        return 0, None
    if page < 1:
        raise BadRequest("'page' starts at 1")
    return (min(page, MAX_PAGE) - 1) * PAGE_SIZE, PAGE_SIZE


class ChatBook:
    def __init__(
        self,
        store: ChatStore,
        is_generating: Callable[[str, str], bool] = lambda _c, _m: False,
        locks: Locks | None = None,
    ) -> None:
        self.store = store
        # Replies being generated have one writer, the generator: updates
        # from clients (which may hold a stale copy) must not overwrite them.
        self._is_generating = is_generating
        # A chat's edits read, merge and write its tree: one at a time per chat
        # (across replicas when they share Redis), or two at once would each
        # write what the other did not see (one's fields lost, or a parentId
        # cycle neither made alone).
        self._locks = LocalLocks() if locks is None else locks

    def _editing(self, chat_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks(f"chat:{chat_id}")

    # -- reading -----------------------------------------------------------
    async def owned(self, principal: Principal, chat_id: str) -> ChatRecord:
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.user_id != principal.user_id:
            raise NotFound("Chat not found")
        return chat

    async def owned_history(
        self, principal: Principal, chat_id: str
    ) -> tuple[ChatRecord, dict[str, Any]]:
        """`owned`, and the chat's history, in one read of the store."""
        found = await self.store.get_chat_and_messages(chat_id, principal.user_id)
        if found is None:
            raise NotFound("Chat not found")
        chat, records = found
        return chat, await shaped_history(chat, records)

    async def response(self, chat: ChatRecord) -> dict[str, Any]:
        records = await self.store.get_messages(chat.id)
        return await tree_work(len(records), chat_response, chat, records)

    async def history(self, chat: ChatRecord) -> dict[str, Any]:
        return await shaped_history(chat, await self.store.get_messages(chat.id))

    async def shared(self, share_id: str) -> ChatRecord:
        """A shared chat's snapshot, as anyone with its link sees it (`_shown`)."""
        snapshot = await self.store.get_chat(share_id)
        chat = await self.store.get_chat_by_share_id(share_id)
        if chat is None:
            # No chat carries the link (any more): a snapshot left by an unshare cut
            # short, or a share that lost to another at once, is never shown.
            raise NotFound("Shared chat not found")
        if snapshot is not None and snapshot.user_id.startswith(SHARED_BY):
            return _shown(snapshot)
        # Shared before snapshots were made: its snapshot is made now (under the
        # chat's edit lock, the link read again: an unshare meanwhile wins).
        async with self._editing(chat.id):
            chat = await self.store.get_chat_by_share_id(share_id)
            if chat is None:
                raise NotFound("Shared chat not found")
            return _shown(await self._snapshot(chat, share_id))

    async def sharer(self, shown_user_id: str) -> str | None:
        """Whose chat a link shows, from the user id a snapshot is shown with
        (`_shown`): the owner of the chat that carries the link; None when none does."""
        if not shown_user_id.startswith(SHOWN_SHARER):
            return None
        chat = await self.store.get_chat_by_share_id(shown_user_id.removeprefix(SHOWN_SHARER))
        return chat.user_id if chat is not None else None

    async def share(self, chat: ChatRecord) -> ChatRecord:
        """The chat as it is now, copied under its share id (made, or made again: the
        web app's "update and copy link"), as `shared` shows it: what is written in
        the chat after is not shared, as the web app tells its user."""
        async with self._editing(chat.id):
            fresh = await self.store.get_chat(chat.id)  # (a share made meanwhile kept)
            if fresh is None:
                raise NotFound("Chat not found")
            share_id = fresh.share_id or str(uuid.uuid4())
            snapshot = await self._snapshot(fresh, share_id)
            if fresh.share_id is None:
                await self.set_flags(fresh, share_id=share_id)
        return _shown(snapshot)

    async def unshare(self, chat: ChatRecord) -> bool:
        """The link, then its snapshot, gone; False when the chat was not shared."""
        async with self._editing(chat.id):
            fresh = await self.store.get_chat(chat.id)
            if fresh is None or fresh.share_id is None:
                return False
            share_id = fresh.share_id
            await self.set_flags(fresh, share_id=None)
            await self.store.delete_chat(share_id)
        return True

    async def _snapshot(self, chat: ChatRecord, share_id: str) -> ChatRecord:
        records = await self.store.get_messages(chat.id)
        snapshot = ChatRecord(
            id=share_id,
            user_id=SHARED_BY + chat.user_id,
            title=chat.title,
            current_id=chat.current_id,
            created_at=chat.created_at,
            updated_at=now_s(),
            meta=dict(chat.meta),
            # Not what names another chat or a person (a clone's source, a RAGFlow
            # session's end user).
            extra={k: v for k, v in chat.extra.items() if k not in _NOT_SHARED},
        )
        await self.store.put_chat(snapshot, _copies(share_id, records))
        return snapshot

    # -- writing -----------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        body: Any,
        *,
        imported: bool = False,
    ) -> ChatRecord:
        chat_obj = _chat_object(body)
        request_history = _history_of_request(chat_obj)
        history = await tree_work(_size(request_history), normalized, request_history)
        created = now_s()
        if imported:
            created = _int_or(body.get("created_at"), created)
        chat = ChatRecord(
            id=str(uuid.uuid4()),
            user_id=principal.user_id,
            title=str(chat_obj.get("title") or DEFAULT_TITLE),
            current_id=history["currentId"],
            created_at=created,
            updated_at=_int_or(body.get("updated_at"), created) if imported else created,
            pinned=imported and body.get("pinned") is True,  # (not the string "false")
            folder_id=body.get("folder_id") if isinstance(body.get("folder_id"), str) else None,
            meta=dict(body["meta"]) if isinstance(body.get("meta"), Mapping) else {},
            extra={"timestamp": created * 1000, **chat_extra(chat_obj)},
        )
        records = [message_record(chat.id, m) for m in history["messages"].values()]
        await self.store.insert_chat(chat, records)
        return chat

    async def update(self, principal: Principal, chat_id: str, body: Any) -> ChatRecord:
        """Merge a (partial) chat object: top-level keys shallowly, messages field by field."""
        chat, _ = await self.update_edits(principal, chat_id, body)
        return chat

    async def update_edits(
        self, principal: Principal, chat_id: str, body: Any
    ) -> tuple[ChatRecord, list[MessageRecord]]:
        """`update`, and the stored messages whose text it changed (the owner's other
        tabs are told: Open WebUI's `chat:message`)."""
        chat_obj = _chat_object(body)
        update = chat_obj.get("history")
        update = dict(update) if isinstance(update, Mapping) else {}
        if "current_id" in chat_obj and "currentId" not in update:
            update["current_id"] = chat_obj["current_id"]
        async with self._editing(chat_id):
            chat, stored = await self.owned_history(principal, chat_id)
            merged = await self._merged(stored, update)
            changed = [
                record
                for record in _changed_messages(chat.id, stored["messages"], merged["messages"])
                if not self._is_generating(chat.id, record.id)
            ]
            if "title" in chat_obj:
                chat.title = str(chat_obj["title"] or DEFAULT_TITLE)
            chat.extra = {**chat.extra, **chat_extra(chat_obj)}
            chat.current_id = merged["currentId"]
            chat.updated_at = now_s()
            await self.store.save_chat(chat, changed, columns=EDITED_COLUMNS)
        before, after = stored["messages"], merged["messages"]
        edited = [
            record
            for record in changed
            if record.id in before
            and before[record.id].get("content") != after[record.id].get("content")
        ]
        return chat, edited

    async def upsert_message(
        self, principal: Principal, chat_id: str, message_id: str, body: Any
    ) -> ChatRecord:
        if not isinstance(body, Mapping):
            raise BadRequest("Body must be an object")
        async with self._editing(chat_id):
            chat, stored = await self.owned_history(principal, chat_id)
            if self._is_generating(chat.id, message_id):
                # Its one writer is the reply: an edit now would be overwritten by
                # its end, or show a half-written reply as something else.
                raise Conflict(f"Message {message_id!r} is being generated; edit it after")
            fields = {k: v for k, v in body.items() if k not in ("id", "childrenIds")}
            if message_id not in stored["messages"]:
                fields = {"role": "assistant", "parentId": chat.current_id, **fields}
            # Merged into the whole tree so a new parent that is missing, the
            # message itself or one of its descendants is refused (400), not stored.
            merged = await self._merged(stored, {"messages": {message_id: fields}})
            chat.updated_at = now_s()
            record = message_record(chat.id, merged["messages"][message_id])
            await self.store.save_chat(chat, [record])
        return chat

    async def delete_message(
        self, principal: Principal, chat_id: str, message_id: str
    ) -> ChatRecord:
        """The message and its replies deleted, their replies moved up under its parent
        (`tree.remove`), as the web app shows it; 409 while one of them is generated."""
        async with self._editing(chat_id):
            chat, stored = await self.owned_history(principal, chat_id)
            try:
                removal = await tree_work(_size(stored), tree.remove, stored, message_id)
            except tree.TreeError:
                raise NotFound("Message not found") from None
            # (A reply that moves would end under its old parent: its end is written
            # as it began.)
            touched = [*removal.removed, *removal.moved]
            if any(self._is_generating(chat.id, mid) for mid in touched):
                raise Conflict("A reply being generated cannot be deleted or moved; stop it first")
            messages = stored["messages"]
            moved = [
                message_record(chat.id, {**messages[mid], "parentId": parent})
                for mid, parent in removal.moved.items()
            ]
            chat.current_id = removal.current_id
            chat.updated_at = now_s()
            await self.store.save_chat(chat, moved, removed=removal.removed)
        return chat

    @staticmethod
    async def _merged(stored: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
        return await tree_work(_size(stored) + _size(update), _merged_update, stored, update)

    async def set_params(self, chat: ChatRecord, params: dict[str, Any]) -> ChatRecord:
        """The chat's model parameters merged with `params` (`extra.params`), read and
        written under its edit lock (an edit of the chat writes `extra` too)."""
        async with self._editing(chat.id):
            fresh = await self.store.get_chat(chat.id)
            if fresh is None:
                raise NotFound("Chat not found")
            kept = fresh.extra.get("params")
            kept = kept if isinstance(kept, dict) else {}
            return await self.set_flags(fresh, extra={**fresh.extra, "params": {**kept, **params}})

    async def set_flags(self, chat: ChatRecord, **changes: Any) -> ChatRecord:
        for name, value in changes.items():
            setattr(chat, name, value)
        chat.updated_at = now_s()
        await self.store.change_chat(chat, *changes, "updated_at")
        return chat

    async def clone(
        self,
        principal: Principal,
        source: ChatRecord,
        title: str | None,
        up_to: str | None = None,
    ) -> ChatRecord:
        """A copy of the chat, its own; `up_to` a message: only the messages from the
        root down to it (the web app's "fork"), it the current one."""
        records = await self.store.get_messages(source.id)
        current = source.current_id
        if up_to is not None:
            by_id = {record.id: record for record in records}
            history = await shaped_history(source, records)
            path = tree.path_to(history, up_to) if up_to in by_id else []
            if not path:
                raise NotFound("Message not found")
            records = [by_id[message["id"]] for message in path]
            current = up_to
        created = now_s()
        chat = ChatRecord(
            id=str(uuid.uuid4()),
            user_id=principal.user_id,
            title=title or f"Clone of {source.title}",
            current_id=current,
            created_at=created,
            updated_at=created,
            folder_id=source.folder_id if source.user_id == principal.user_id else None,
            meta=dict(source.meta),
            extra={
                **source.extra,
                "originalChatId": source.id,
                "branchPointMessageId": current,
            },
        )
        await self.store.insert_chat(chat, _copies(chat.id, records))
        return chat


# What an edit of the chat object writes of its row (`update_edits`).
EDITED_COLUMNS = ("title", "current_id", "updated_at", "extra")
# How a snapshot's sharer is shown: "shared-<share id>" (`sharer` reads it back).
SHOWN_SHARER = "shared-"
_NOT_SHARED = frozenset({"originalChatId", "branchPointMessageId", "ragflow"})


def _copies(chat_id: str, records: list[MessageRecord]) -> list[MessageRecord]:
    return [
        MessageRecord(chat_id, r.id, r.parent_id, r.role, r.content, r.done, dict(r.fields))
        for r in records
    ]


def _shown(snapshot: ChatRecord) -> ChatRecord:
    """A snapshot as a link shows it: its own id (the share id, as Open WebUI's
    snapshot has), not the chat's, and no user id of the sharer's (a made-up one,
    in the form Open WebUI gives its snapshots)."""
    return dataclasses.replace(
        snapshot, user_id=f"{SHOWN_SHARER}{snapshot.id}", share_id=snapshot.id, folder_id=None
    )


def _size(history: Mapping[str, Any]) -> int:
    messages = history.get("messages")
    return len(messages) if isinstance(messages, Mapping) else 0


def _changed_messages(
    chat_id: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[MessageRecord]:
    """Only the messages an update really touched are written (one row each)."""
    changed: list[MessageRecord] = []
    for mid, message in after.items():
        old = before.get(mid)
        if old is None or _without_children(old) != _without_children(message):
            changed.append(message_record(chat_id, message))
    return changed


def _without_children(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "childrenIds"}


# A time a client gives: epoch seconds a store's integer column holds (SQLite's
# INTEGER, PostgreSQL's BIGINT), none before 1970.
_TIMES = range(0, 2**63)


def _int_or(value: Any, default: int) -> int:
    """A client's time, if it is one (see `_TIMES`); else `default`."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value in _TIMES
    return value if ok else default
