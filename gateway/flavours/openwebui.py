"""Open WebUI: the `/api/chat/completions` request as its clients send it (PROTOCOLS.md §1.2).

Three modes share the route; the body says which::

    no chat_id                      pure API: an OpenAI request, nothing stored
    chat_id + id (assistant msg)    backend-controlled: the reply is written into
                                    chat.history.messages[id]
    session_id of a live socket     frontend mode (the web app)

Unlike OpenAI, `messages` may be absent: the chat's tree is the conversation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.commands import Ask
from gateway.errors import BadRequest
from gateway.flavours.openai import PASSTHROUGH_PARAMS, decode_common, decode_messages


def is_stored_request(body: Any) -> bool:
    return isinstance(body, Mapping) and bool(body.get("chat_id"))


def decode_completion_request(body: Any) -> Ask:
    body, model, stream = decode_common(body)
    raw_messages = body.get("messages")
    messages = decode_messages(raw_messages) if raw_messages else []
    chat_id = body.get("chat_id")
    message_id = body.get("id")
    if chat_id is not None and not isinstance(chat_id, str):
        raise BadRequest("'chat_id' must be a string")
    if chat_id and (not isinstance(message_id, str) or not message_id):
        raise BadRequest("'id' (the assistant message to answer into) is required with 'chat_id'")
    options = body.get("stream_options") or {}
    user_message = body.get("user_message")
    return Ask(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(isinstance(options, Mapping) and options.get("include_usage")),
        params={key: body[key] for key in PASSTHROUGH_PARAMS if key in body},
        chat_id=chat_id or None,
        message_id=message_id if isinstance(message_id, str) else None,
        parent_id=body.get("parent_id") if isinstance(body.get("parent_id"), str) else None,
        session_id=body.get("session_id") if isinstance(body.get("session_id"), str) else None,
        user_message=dict(user_message) if isinstance(user_message, Mapping) else None,
    )
