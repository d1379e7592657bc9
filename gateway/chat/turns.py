"""What one turn adds to a chat's tree, as pure functions (no store, no I/O).

Open WebUI's web app sends a turn as (docs/PROTOCOLS.md §1.2, frontend mode)::

    {"id": "<first assistant id>", "parent_id": "<the user message's parent>" | null,
     "user_message": {"id", "parentId", "role": "user", "content", ...},
     "message_ids": [{"model_id", "message_id", "modelIdx"}, ...], "chat_id"?: ...}

and the turn becomes::

    parent ─▶ user message (written only if new: regenerate reuses it)
                 ├─▶ placeholder for model 1  {content: "", done: false}
                 └─▶ placeholder for model 2

A placeholder that exists already (continue, or backend-controlled replies)
is answered into again; it must be an assistant message, and one that answers
this turn's question: a reply id naming a message of another branch is a
`Conflict` (409), never an overwrite of that message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.chat import tree
from gateway.commands import MAX_ID_CHARS, Ask, ReplyTarget
from gateway.errors import BadRequest, Conflict

# Fields of an old answer that a new answer into the same message drops.
_STALE_REPLY_FIELDS = ("error", "usage", "cancelled", "output")

def check_ids(ask: Ask) -> None:
    """BadRequest for an id past MAX_ID_CHARS among those a reply carries or names."""
    named = [ask.chat_id, ask.message_id, ask.parent_id, ask.session_id]
    named += [target.message_id for target in ask.targets]
    if ask.user_message is not None:
        named.append(ask.user_message.get("id"))
    for value in named:
        if isinstance(value, str) and len(value) > MAX_ID_CHARS:
            raise BadRequest(f"An id has at most {MAX_ID_CHARS} characters")


@dataclass(frozen=True, slots=True)
class Turn:
    history: dict[str, Any]  # the whole tree after the turn
    writes: list[dict[str, Any]]  # messages to write, new or changed
    replies: list[tuple[dict[str, Any], ReplyTarget]]  # placeholder, who answers it
    question_id: str  # the user message the replies answer
    conversation: list[dict[str, Any]]  # what the model is sent (`conversation_for`)


def new_placeholder(
    message_id: str, parent_id: str, model: str, now_s: int, model_idx: int | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": message_id,
        "parentId": parent_id,
        "role": "assistant",
        "content": "",
        "done": False,
        "model": model,
        "timestamp": now_s,
    }
    if model_idx is not None:
        message["modelIdx"] = model_idx
    return message


def reanswer(existing: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An existing assistant message, emptied to be answered again."""
    if existing.get("role") != "assistant":
        raise BadRequest(
            f"message '{existing.get('id')}' is a {existing.get('role')} message, "
            "not an assistant one"
        )
    message = {k: v for k, v in existing.items() if k not in _STALE_REPLY_FIELDS}
    return {**message, "content": "", "done": False, "model": model}


def unanswered(message: Mapping[str, Any]) -> bool:
    """An assistant message that holds no answer to send back to a model: empty or
    blank content (a list of parts counts as an answer)."""
    if message.get("role") != "assistant":
        return False
    content = message.get("content")
    return not content or (isinstance(content, str) and not content.strip())


def conversation_for(
    path: list[dict[str, Any]], requested: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What the model sees: the path root → user message, and the request's system prompt.

    An assistant message with no answer (failed before any text, stopped at
    once, still a placeholder) is left out, as Open WebUI leaves it out
    (`load_messages_from_db`): never `{"role": "assistant", "content": ""}`."""
    turns = [
        {"role": m.get("role"), "content": m.get("content") or ""}
        for m in path
        if m.get("role") in ("system", "user", "assistant") and not unanswered(m)
    ]
    if not any(t["role"] == "user" for t in turns):
        return list(requested)
    if not any(t["role"] == "system" for t in turns):
        systems = [dict(m) for m in requested if m.get("role") == "system"]
        turns = systems + turns
    return turns


def check_answers(existing: Mapping[str, Any], question_id: str | None) -> None:
    """An existing message a reply would be written into must be an assistant message
    under the question being answered (`None`: any question will do); anything else
    would overwrite another branch's message (409, nothing written)."""
    reanswer(existing, "")  # an assistant message, or the 400 that says what it is
    if question_id is not None and existing.get("parentId") != question_id:
        raise Conflict(
            f"message '{existing.get('id')}' already exists on another branch "
            f"(it answers '{existing.get('parentId')}', not '{question_id}'): "
            "send a new id for a new reply"
        )


def check_reply_into(
    history: Mapping[str, Any], existing: Mapping[str, Any], parent_id: str | None
) -> None:
    """Backend-controlled: may a reply be written into `existing`?  Under `parent_id`
    when the request names one; else when it is the chat's current message or a
    placeholder not yet answered, or answers the current path's last question.  A
    finished answer elsewhere in the tree is another branch's (409)."""
    question = parent_id
    unanswered = not existing.get("content") and existing.get("done") is not True
    if question is None and existing.get("id") != history.get("currentId") and not unanswered:
        question = tree.last_user_message_id(history)
    check_answers(existing, question)


def plan_turn(history: Mapping[str, Any], ask: Ask, now_s: int) -> Turn:
    """The user message (if new) and the placeholders one frontend-mode request adds."""
    messages = history.get("messages") or {}
    writes: list[dict[str, Any]] = []
    question_id: str | None
    if ask.user_message is not None:
        user = {k: v for k, v in ask.user_message.items() if k != "childrenIds"}
        question_id = str(user["id"])
        if question_id not in messages:
            parent = ask.parent_id if ask.parent_id is not None else user.get("parentId")
            writes.append({**user, "parentId": parent, "role": "user"})
    else:
        question_id = ask.parent_id or tree.last_user_message_id(history)
    if question_id is None:
        raise BadRequest("Nothing to answer: send 'user_message' or a 'parent_id'")
    reply_ids = [target.message_id for target in ask.reply_targets()]
    if len(set(reply_ids)) != len(reply_ids):
        raise BadRequest("Each reply of a turn needs an id of its own")
    if question_id in reply_ids and question_id not in messages:
        raise BadRequest(f"'{question_id}' is the new question's id: a reply needs another")
    replies: list[tuple[dict[str, Any], ReplyTarget]] = []
    for target in ask.reply_targets():
        existing = messages.get(target.message_id)
        if existing is not None:
            if ask.user_message is None and question_id not in messages:
                raise BadRequest(f"message '{question_id}' (the question to answer) does not exist")
            check_answers(existing, question_id)
            placeholder = reanswer(existing, target.model)
        else:
            placeholder = new_placeholder(
                target.message_id, question_id, target.model, now_s, target.model_idx
            )
        writes.append(placeholder)
        replies.append((placeholder, target))
    try:
        # The stored history is consistent: only the turn's own messages are added.
        merged = tree.grow(history, writes, replies[0][0]["id"])
        if question_id not in merged["messages"]:
            raise BadRequest(f"message '{question_id}' (the question to answer) does not exist")
        for message in writes:
            # Written whole, not merged: a reanswered message drops its stale fields.
            children = merged["messages"][message["id"]]["childrenIds"]
            merged["messages"][message["id"]] = {**message, "childrenIds": children}
        # Its branch reaches a root (what the model is sent): checked here, where a
        # broken stored chat is still a 400.
        path = tree.path_to(merged, question_id)
    except tree.TreeError as exc:
        raise BadRequest(f"Inconsistent chat history: {exc}") from None
    return Turn(merged, writes, replies, question_id, conversation_for(path, ask.messages))
