"""Chat assistants (RAGFlow's "chats") and their sessions, on the chat core.

An assistant is a stored configuration: a name, a model with sampling
settings, a system prompt and an opener.  A session of an assistant is an
ordinary chat of the core (`ChatRecord.assistant_id` names the assistant)::

    chat.title               the session's name
    chat.extra["ragflow"]    {"opener": <the assistant's opener when the session began>,
                              "user_id": <RAGFlow's optional end-user id>}
    history.messages         the questions and answers, a history tree like any chat

so the owner's Open WebUI sidebar lists it, and it can be continued from any
flavour.  Another user's assistant or session is "not yours", always with
the same error as one that does not exist.  Deleting a session stops its
replies first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.application.replies import Replies, StartedTurn, StopTarget
from gateway.chat.chats import now_s, shaped_history
from gateway.chat.tree import current_path
from gateway.commands import Say
from gateway.edge.auth import Principal
from gateway.errors import Conflict, NotFound
from gateway.flavours import ragflow_defaults as defaults
from gateway.store import AssistantRecord, AssistantStore, ChatRecord, ChatStore, DuplicateKey

__all__ = ["AssistantRecord", "Assistants", "ChatRecord", "now_ms", "session_extra"]

SESSION_EXTRA = "ragflow"


def now_ms() -> int:
    return int(time.time() * 1000)


class Assistants:
    def __init__(self, store: AssistantStore, chats: ChatStore, replies: Replies) -> None:
        self.store = store
        self.chats = chats  # sessions are chats
        self._replies = replies

    # -- assistants ------------------------------------------------------------
    async def create(
        self, principal: Principal, settings: Mapping[str, Any], model: str
    ) -> AssistantRecord:
        """An assistant with the settings sent and RAGFlow's defaults for the rest."""
        created = now_ms()
        config = defaults.assistant_config(settings, model)
        assistant = AssistantRecord(
            uuid.uuid4().hex, principal.user_id, str(settings["name"]), config, created, created
        )
        try:
            await self.store.create_assistant(assistant)
        except DuplicateKey:
            raise Conflict("Duplicated chat name in creating chat.") from None
        return assistant

    async def owned(
        self, principal: Principal, assistant_id: str, message: str | None = None
    ) -> AssistantRecord:
        assistant = await self.store.get_assistant(assistant_id)
        if assistant is None or assistant.user_id != principal.user_id:
            raise NotFound(message or f"You don't own the chat {assistant_id}")
        return assistant

    async def listed(
        self,
        principal: Principal,
        *,
        assistant_id: str | None = None,
        name: str | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[AssistantRecord]:
        return await self.store.list_assistants(
            principal.user_id,
            assistant_id=assistant_id,
            name=name,
            newest_first=newest_first,
            skip=skip,
            limit=limit,
        )

    async def delete(self, assistant: AssistantRecord) -> None:
        await self.store.delete_assistant(assistant.id)

    async def update(
        self, assistant: AssistantRecord, settings: Mapping[str, Any]
    ) -> AssistantRecord:
        config = dict(assistant.config)
        for key in ("avatar", "description", "dataset_ids"):
            if key in settings:
                config[key] = settings[key]
        for key in ("llm", "prompt"):
            if key in settings:
                config[key] = {**config.get(key, {}), **settings[key]}
        assistant.config = config
        assistant.name = settings.get("name", assistant.name)
        assistant.updated_at_ms = now_ms()
        try:
            await self.store.update_assistant(assistant)
        except DuplicateKey:
            raise Conflict("Duplicated chat name in updating chat.") from None
        return assistant

    # -- sessions --------------------------------------------------------------
    async def create_session(
        self,
        assistant: AssistantRecord,
        name: str = defaults.DEFAULT_SESSION_NAME,
        end_user: str = "",
    ) -> ChatRecord:
        """A session begins with the assistant's opener as it is at that moment."""
        chat = self.new_session(assistant, name, end_user)
        await self.chats.insert_chat(chat, [])
        return chat

    @staticmethod
    def new_session(
        assistant: AssistantRecord,
        name: str = defaults.DEFAULT_SESSION_NAME,
        end_user: str = "",
    ) -> ChatRecord:
        """A session, not stored yet: `create_session` stores it alone, `ask` (with
        `stored=False`) with its first turn, in one write."""
        opener = defaults.opener_of(assistant.config)
        created = now_s()
        chat = ChatRecord(
            id=uuid.uuid4().hex,
            user_id=assistant.user_id,
            title=name,
            current_id=None,
            created_at=created,
            updated_at=created,
            extra={
                "timestamp": created * 1000,
                "models": [assistant.config.get("llm", {}).get("model_name")],
                SESSION_EXTRA: {"opener": opener, "user_id": end_user},
            },
            assistant_id=assistant.id,
        )
        return chat

    async def session(
        self, assistant: AssistantRecord, session_id: str, message: str | None = None
    ) -> ChatRecord:
        chat = await self.chats.get_chat(session_id)
        if chat is None or chat.user_id != assistant.user_id or chat.assistant_id != assistant.id:
            raise NotFound(message or f"You don't own the session {session_id}")
        return chat

    async def session_and_history(
        self, assistant: AssistantRecord, session_id: str
    ) -> tuple[ChatRecord, dict[str, Any]]:
        """`session`, and its history, in one read of the store (a question's)."""
        found = await self.chats.get_chat_and_messages(session_id, assistant.user_id)
        if found is None or found[0].assistant_id != assistant.id:
            raise NotFound(f"You don't own the session {session_id}")
        session, records = found
        return session, await shaped_history(session, records)

    async def sessions(
        self,
        assistant: AssistantRecord,
        *,
        session_id: str | None = None,
        name: str | None = None,
        end_user: str | None = None,
    ) -> list[ChatRecord]:
        chats = await self.chats.list_chats(
            assistant.user_id, archived=None, assistant_id=assistant.id
        )
        return [
            chat
            for chat in chats
            if (session_id is None or chat.id == session_id)
            and (name is None or chat.title == name)
            and (end_user is None or session_extra(chat).get("user_id") == end_user)
        ]

    async def messages(self, session: ChatRecord) -> list[dict[str, Any]]:
        """The session's conversation: root to its current message."""
        history = await shaped_history(session, await self.chats.get_messages(session.id))
        return current_path(history) if history["currentId"] else []

    async def rename_session(self, session: ChatRecord, name: str) -> None:
        session.title = name
        session.updated_at = now_s()
        await self.chats.change_chat(session, "title", "updated_at")

    async def delete_session(self, session: ChatRecord) -> None:
        await self._replies.stop(StopTarget(session.user_id, chat_id=session.id))
        await self.chats.delete_chat(session.id)

    async def ask(
        self,
        principal: Principal,
        assistant: AssistantRecord,
        session: ChatRecord,
        question: str,
        *,
        rooms: tuple[str, ...],
        history: dict[str, Any] | None = None,
        stored: bool = True,
    ) -> StartedTurn:
        """The question goes under the session's current message and is answered by
        the assistant's model (the default one if it is gone), as its system prompt says.
        `session` (and its `history`) as `session_and_history()` read them (not read
        again), or, `stored=False`, as `new_session` made it: stored with this first
        turn."""
        say = Say(question, session.id, self.model_of(assistant))
        return await self._replies.say(
            principal,
            say,
            system=self.system_prompt(assistant),
            params=self.model_params(assistant),
            rooms=rooms,
            chat=session,
            history=history,
            stored=stored,
        )

    # -- what the assistant's config says ---------------------------------------------
    @staticmethod
    def opener(assistant: AssistantRecord) -> str:
        return defaults.opener_of(assistant.config)

    @staticmethod
    def system_prompt(assistant: AssistantRecord) -> str:
        return defaults.system_prompt(assistant.config)

    @staticmethod
    def model_params(assistant: AssistantRecord) -> dict[str, Any]:
        return defaults.model_params(assistant.config)

    @staticmethod
    def model_of(assistant: AssistantRecord) -> str | None:
        model = assistant.config.get("llm", {}).get("model_name")
        return model if isinstance(model, str) else None


def session_extra(chat: ChatRecord) -> dict[str, Any]:
    extra = chat.extra.get(SESSION_EXTRA)
    return dict(extra) if isinstance(extra, Mapping) else {}
