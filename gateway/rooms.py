"""Room names, written once.  A room is a string naming who receives an event;
who may join which is in SECURITY.md ("Rooms and sessions")::

    user:<user id>                 every Socket.IO socket of the user (Open WebUI's events)
    chat:<chat id>                 a chat's replies and message events
    reply:<chat id>/<message id>   one reply, for the HTTP response that asked for it   local
    conn:<connection id>           what one connection asked for (RAGFlow, an SSE answer)  local
    session:<user>:<session id>    a Nadoo chat session of one user (the user id
                                   percent-encoded, so no two pairs share a room)
    workspace:<workspace id>       a Nadoo workspace, shared by whoever joins it
    notify:<user id>               the user's Nadoo notification sockets

Local rooms belong to one connection or one HTTP response of this process:
they never leave it, so the bus never carries them.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

LOCAL_PREFIXES = ("conn:", "reply:")


def user(user_id: str) -> str:
    return f"user:{user_id}"


def chat(chat_id: str) -> str:
    return f"chat:{chat_id}"


def reply(chat_id: str, message_id: str) -> str:
    return f"reply:{chat_id}/{message_id}"


def connection(conn_id: str | None = None) -> str:
    """A connection's own room; a fresh one when no id is given."""
    return f"conn:{conn_id or uuid.uuid4().hex}"


def session(user_id: str, session_id: str) -> str:
    return f"session:{quote(user_id, safe='')}:{session_id}"


def workspace(workspace_id: str) -> str:
    return f"workspace:{workspace_id}"


def notify(user_id: str) -> str:
    return f"notify:{user_id}"


def is_local(room: str) -> bool:
    return room.startswith(LOCAL_PREFIXES)
