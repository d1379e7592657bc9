"""Searching a user's chats as Open WebUI 0.12's sidebar search shows them: every
word of the query in the title or in one message, best first, with the passage
that matched::

    {"items": [{"id", "kind": "chat", "title", "context", "snippet", "preview",
                "url": "/c/<id>[?message=<id>]", "updated_at", "shared", "pinned"}],
     "has_more": bool, "scopes": [], "kinds": ["chat"]}

Pure: the store finds the candidates (every word somewhere), this ranks them
(a title equal to the query, then one containing it, then the rest, newest
first) and cuts the excerpts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from gateway.store.records import ChatRecord, MessageRecord

PAGE_SIZE = 24
# Chats read to find a page (each costs its messages): a query of common words
# over thousands of chats stops here rather than read them all.
MAX_CANDIDATES = 500
# Characters of messages one search reads at most: the candidates bound counts
# chats, not their size (a probe's 40 chats of 4 MB cost 5 s of CPU a search).
# Past it the search ends with what it found, as past MAX_CANDIDATES.
MAX_READ_CHARS = 32 * 1024 * 1024
# A chat of more is matched and excerpted in the off-loop thread (`offloop.py`).
OFF_LOOP_CHARS = 256 * 1024
MAX_TERMS = 12
SNIPPET_CHARS = 200
PREVIEW_CHARS = 2400


def terms_of(query: str) -> list[str]:
    return list(dict.fromkeys(query.lower().split()))[:MAX_TERMS]


def excerpt(content: str, query: str, length: int) -> str:
    """`length` characters around the first word of the query found in `content`."""
    lowered = content.lower()
    found = [at for at in (lowered.find(term) for term in terms_of(query)) if at >= 0]
    start = max(0, min(found, default=0) - length // 4)
    text = content[start : start + length].strip()
    return ("…" if start else "") + text + ("…" if start + length < len(content) else "")


def passage(
    messages: Sequence[MessageRecord], query: str, lowered: Sequence[str] | None = None
) -> tuple[str, str | None]:
    """The message holding every word (else any word) of the query: its text and id;
    the last message's text when none does.  `lowered`: each message's text in
    lower case, made once for every word."""
    terms = terms_of(query)
    lowered = lowered if lowered is not None else [m.content.lower() for m in messages]
    pairs = list(zip(messages, lowered, strict=True))
    every = next((m for m, low in pairs if terms and all(t in low for t in terms)), None)
    match = every or next((m for m, low in pairs if any(t in low for t in terms)), None)
    if match is not None:
        return match.content, match.id
    return (messages[-1].content if messages else ""), None


def rank(chat: ChatRecord, query: str) -> int:
    title, wanted = chat.title.lower(), query.strip().lower()
    if not wanted:
        return 3
    if title == wanted:
        return 0
    return 1 if wanted in title else 3


def item(
    chat: ChatRecord,
    messages: Sequence[MessageRecord],
    query: str,
    lowered: Sequence[str] | None = None,
) -> dict[str, Any]:
    content, message_id = passage(messages, query, lowered)
    url = f"/c/{chat.id}" + (f"?{urlencode({'message': message_id})}" if message_id else "")
    return {
        "id": chat.id,
        "kind": "chat",
        "title": chat.title or "Untitled",
        "context": "Personal chat",
        "snippet": excerpt(content, query, SNIPPET_CHARS),
        "preview": excerpt(content, query, PREVIEW_CHARS),
        "url": url,
        "updated_at": chat.updated_at,
        "shared": chat.share_id is not None,
        "pinned": chat.pinned,
    }


def found(chat: ChatRecord, messages: Sequence[MessageRecord], query: str) -> dict[str, Any] | None:
    """The chat's item if every word is in its title or its messages (the store
    matched one of them), None if not; each message lowered once for the match and
    the excerpt."""
    lowered = [m.content.lower() for m in messages]
    text = "\n".join([chat.title.lower(), *lowered])
    if not all(term in text for term in terms_of(query)):
        return None
    return item(chat, messages, query, lowered)


def ordered(chats: Sequence[ChatRecord], query: str) -> list[ChatRecord]:
    return sorted(chats, key=lambda chat: (rank(chat, query), -chat.updated_at, chat.id))
