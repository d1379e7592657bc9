"""Chats, as their owners see them through any route or transport.

Every method that names a chat takes the caller's `Principal` and raises
`NotFound` for a chat that does not exist *or* is not theirs.  Deleting a
chat stops its replies first, here and only here.  The history tree and its
rules are the core's (`gateway/chat/chats.py`, `tree.py`); this is the door
to them, with the store behind it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from gateway import offloop, rooms
from gateway.bus import Locks
from gateway.chat import search, tree
from gateway.chat.chats import ChatBook, page_bounds
from gateway.chat.running import RunningReplies, StopTarget
from gateway.chat.shapes import list_item
from gateway.edge.auth import Principal
from gateway.errors import BadRequest, NotFound
from gateway.events import MessageEvent
from gateway.fanout.hub import Hub
from gateway.store import ChatRecord, ChatStore
from gateway.store.records import MessageRecord

__all__ = ["ChatRecord", "Chats"]

Tag = dict[str, Any]
# A tag's name, at most (Open WebUI has no bound; a tag list carries every name).
MAX_TAG_CHARS = 100


class Chats:
    def __init__(
        self, store: ChatStore, running: RunningReplies, hub: Hub, locks: Locks | None = None
    ) -> None:
        self._store = store
        self._running = running
        self._hub = hub
        # `locks`: a chat's edits one at a time (across replicas, on Redis).
        self.book = ChatBook(store, running.is_generating, locks)

    # -- reading -----------------------------------------------------------------
    async def owned(self, principal: Principal, chat_id: str) -> ChatRecord:
        return await self.book.owned(principal, chat_id)

    async def owns(self, principal: Principal, chat_id: str) -> bool:
        try:
            await self.book.owned(principal, chat_id)
        except NotFound:
            return False
        return True

    async def response(self, chat: ChatRecord) -> dict[str, Any]:
        """The chat as Open WebUI's API returns it (the whole history tree)."""
        return await self.book.response(chat)

    async def history(self, chat: ChatRecord) -> dict[str, Any]:
        return await self.book.history(chat)

    async def current_path(self, chat: ChatRecord) -> list[dict[str, Any]]:
        """The messages from the root to the chat's current one."""
        history = await self.book.history(chat)
        return tree.current_path(history) if history["currentId"] else []

    async def items(self, principal: Principal, page: int | None, **filters: Any) -> list[Any]:
        """One page (60) of list items; every chat when `page` is None."""
        skip, limit = page_bounds(page)
        chats = await self._store.list_chats(principal.user_id, skip=skip, limit=limit, **filters)
        return [list_item(chat) for chat in chats]

    async def tagged(
        self, principal: Principal, tag: str, skip: int, limit: int | None
    ) -> list[Any]:
        chats = await self._store.list_chats(
            principal.user_id, tag=tag, archived=None, skip=skip, limit=limit
        )
        return [list_item(chat) for chat in chats]

    async def responses(
        self, principal: Principal, **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Each chat whole, one after the other (read as it is sent)."""
        chats = await self._store.list_chats(principal.user_id, **filters)
        for chat in chats:
            yield await self.book.response(chat)

    async def search(self, principal: Principal, query: str, page: int) -> dict[str, Any]:
        """Open WebUI 0.12's workspace search, over the caller's chats (`chat/search.py`)."""
        terms = search.terms_of(query)
        # The store finds chats with the first word; the others are checked here.
        found = await self._store.list_chats(
            principal.user_id, archived=None, text=terms[0] if terms else None
        )
        start = (max(1, page) - 1) * search.PAGE_SIZE
        items: list[dict[str, Any]] = []
        read = 0
        for chat in search.ordered(found, query)[: search.MAX_CANDIDATES]:
            # Past the read bound the search ends with what it found: a later page,
            # which reads the same chats first, finds nothing more (so its client
            # stops asking), as past the candidates' bound.
            if len(items) == start + search.PAGE_SIZE + 1 or read >= search.MAX_READ_CHARS:
                break
            messages = await self._store.get_messages(chat.id)
            size = sum(len(m.content) for m in messages)
            read += size
            hit = await offloop.run_if(
                size > search.OFF_LOOP_CHARS, search.found, chat, messages, query
            )
            if hit is not None:
                items.append(hit)
        page_items = items[start : start + search.PAGE_SIZE]
        more = len(items) > start + search.PAGE_SIZE
        return {"items": page_items, "has_more": more, "scopes": [], "kinds": ["chat"]}

    async def shared(self, share_id: str) -> ChatRecord:
        return await self.book.shared(share_id)

    # -- writing -----------------------------------------------------------------
    async def create(
        self, principal: Principal, body: Any, *, imported: bool = False
    ) -> ChatRecord:
        return await self.book.create(principal, body, imported=imported)

    async def update(self, principal: Principal, chat_id: str, body: Any) -> ChatRecord:
        chat, edited = await self.book.update_edits(principal, chat_id, body)
        for record in edited:
            self._edited(chat, record.id, _text_of(record))
        return chat

    async def upsert_message(
        self, principal: Principal, chat_id: str, message_id: str, body: Any
    ) -> ChatRecord:
        chat = await self.book.upsert_message(principal, chat_id, message_id, body)
        if isinstance(body, dict) and "content" in body:
            self._edited(chat, message_id, body["content"])
        return chat

    async def delete_message(
        self, principal: Principal, chat_id: str, message_id: str
    ) -> ChatRecord:
        return await self.book.delete_message(principal, chat_id, message_id)

    def _edited(self, chat: ChatRecord, message_id: str, content: Any) -> None:
        """A message's text changed through REST: the owner's tabs (every socket of
        the user, as Open WebUI's `update_chat_message_by_id` emits) show the new text."""
        data = {"chat_id": chat.id, "message_id": message_id, "content": content}
        event = MessageEvent(chat.id, message_id, 0, "chat:message", data)
        self._hub.publish([rooms.user(chat.user_id)], event)

    async def set_flags(self, chat: ChatRecord, **changes: Any) -> ChatRecord:
        return await self.book.set_flags(chat, **changes)

    async def set_params(self, chat: ChatRecord, params: dict[str, Any]) -> ChatRecord:
        return await self.book.set_params(chat, params)

    async def share(self, chat: ChatRecord) -> ChatRecord:
        return await self.book.share(chat)

    async def sharer(self, shown_user_id: str) -> str | None:
        return await self.book.sharer(shown_user_id)

    async def unshare(self, chat: ChatRecord) -> bool:
        return await self.book.unshare(chat)

    async def clone(
        self, principal: Principal, source: ChatRecord, title: str | None
    ) -> ChatRecord:
        return await self.book.clone(principal, source, title)

    async def fork(self, principal: Principal, source: ChatRecord, up_to: str) -> ChatRecord:
        """The web app's "Fork chat": the conversation down to a message, a chat of its
        own under the same title."""
        return await self.book.clone(principal, source, source.title, up_to=up_to)

    async def shared_items(
        self, principal: Principal, page: int | None, query: str | None = None
    ) -> list[Any]:
        """The user's shared chats (Settings › Data Controls › Shared Chats), those
        whose title or text holds `query` when one is given."""
        skip, limit = page_bounds(page)
        chats = await self._store.list_chats(
            principal.user_id, shared=True, archived=None, text=query, skip=skip, limit=limit
        )
        return [{**list_item(chat), "share_id": chat.share_id} for chat in chats]

    async def unshare_all(self, principal: Principal) -> None:
        for chat in await self._store.list_chats(principal.user_id, shared=True, archived=None):
            await self.book.unshare(chat)

    async def archived_count(self, principal: Principal) -> int:
        return await self._store.count_chats(principal.user_id, archived=True)

    async def mark_all_read(self, principal: Principal) -> None:
        await self._store.mark_all_read(principal.user_id, int(time.time()))

    async def mark_unread(self, principal: Principal, chat_id: str) -> dict[str, Any]:
        """Read at 0: before anything in it (the web app's unread is `updated_at` past
        `last_read_at`); the chat's new read state, as the app reads it."""
        chat = await self.book.owned(principal, chat_id)
        chat.last_read_at = 0
        await self._store.change_chat(chat, "last_read_at")
        return {"chat_id": chat.id, "last_read_at": 0}

    async def mark_read(self, principal: Principal, chat_id: str) -> bool:
        """The web app tells when a chat was last read; False for another's chat."""
        try:
            chat = await self.book.owned(principal, chat_id)
        except NotFound:
            return False
        chat.last_read_at = int(time.time())
        await self._store.change_chat(chat, "last_read_at")
        return True

    async def relay_message_event(
        self, chat: ChatRecord, message_id: str, kind: str, data: Any
    ) -> None:
        """Open WebUI's message events: `{type, data}` to the owner's live connections."""
        if await self._store.get_message(chat.id, message_id) is None:
            raise NotFound("Message not found")
        event = MessageEvent(chat.id, message_id, 0, kind, data)
        self._hub.publish([rooms.user(chat.user_id), rooms.chat(chat.id)], event)

    # -- deleting (replies stop first) ---------------------------------------------
    async def delete(self, chat: ChatRecord) -> bool:
        await self._running.stop(StopTarget(chat.user_id, chat_id=chat.id))
        return await self._store.delete_chat(chat.id)  # (its share's snapshot too)

    async def delete_all(self, principal: Principal) -> None:
        await self._running.stop(StopTarget(principal.user_id))
        await self._store.delete_user_chats(principal.user_id)

    async def archive_all(self, principal: Principal, archived: bool) -> None:
        await self._store.set_archived_all(principal.user_id, archived)

    # -- tags ------------------------------------------------------------------------
    async def user_tags(self, principal: Principal) -> list[Tag]:
        return _tags(principal, await self._store.user_tags(principal.user_id))

    async def chat_tags(self, principal: Principal, chat: ChatRecord) -> list[Tag]:
        return _tags(principal, await self._store.chat_tags(chat.id))

    async def tag(self, principal: Principal, chat: ChatRecord, name: str) -> list[Tag]:
        if len(name) > MAX_TAG_CHARS:
            # (Every tag list of the user would carry it.)
            raise BadRequest(f"A tag has at most {MAX_TAG_CHARS} characters")
        await self._store.add_tag(principal.user_id, chat.id, name)
        return await self.chat_tags(principal, chat)

    async def untag(self, principal: Principal, chat: ChatRecord, name: str) -> list[Tag]:
        await self._store.remove_tag(principal.user_id, chat.id, name)
        return await self.chat_tags(principal, chat)

    async def clear_tags(self, chat: ChatRecord) -> None:
        await self._store.clear_chat_tags(chat.id)


def _text_of(record: MessageRecord) -> Any:
    # Multi-part content is kept as sent, in fields (`chat/shapes.py`).
    return record.fields.get("content", record.content)


def _tags(principal: Principal, tags: list[tuple[str, str]]) -> list[Tag]:
    # Open WebUI's tag object.
    return [
        {"id": tid, "name": name, "user_id": principal.user_id, "meta": None} for tid, name in tags
    ]
