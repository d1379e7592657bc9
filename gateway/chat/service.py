"""The chat service: what each command does to the chat tree, and which replies
it asks for.  A turn written into the tree is `turns.py`'s (pure); starting the
replies (their model servers opened, the turn written behind the requests) is
`starter.py`'s; running one is `runner.py`'s; the registry of running replies
(stop anywhere, recovery) is `running.py`'s.

One entry point per command::

    open_reply(principal, Ask)    pure API: nothing stored, the caller iterates
                                  the events (closing them stops the upstream)
    start_reply(principal, Ask)   backend-controlled (`chat_id` + `id`): one
                                  placeholder; returns once its model server has
                                  answered (stoppable meanwhile), so "unknown
                                  model" is still an HTTP error
    start_turn(principal, Ask)    frontend mode (the web app): user message and
                                  placeholders written, answered at once; a failure
                                  to open arrives as a ReplyFailed event
    say(principal, Say)           a raw-WebSocket message (Nadoo, RAGFlow): a turn
                                  under the chat's current message, answered
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from gateway.bus import Replicas
from gateway.chat import tree
from gateway.chat.accounting import counted, refused
from gateway.chat.background import Background
from gateway.chat.chats import ChatBook, new_chat, now_s, title_for, tree_work
from gateway.chat.runner import ReplyRunner
from gateway.chat.running import RunningReplies
from gateway.chat.shapes import message_record
from gateway.chat.slots import ReplySlots
from gateway.chat.starter import ReplyStarter, StartedReply, StartedTurn
from gateway.chat.turns import (
    check_ids,
    check_reply_into,
    conversation_for,
    new_placeholder,
    plan_turn,
    reanswer,
)
from gateway.commands import Ask, ReplyTarget, Say
from gateway.edge.auth import Principal
from gateway.edge.stopping import stopped
from gateway.edge.trace import Traces
from gateway.errors import (
    SERVER_STOPPING,
    BadRequest,
    GatewayError,
    ModelNotFound,
    NotFound,
    Unavailable,
    UpstreamError,
)
from gateway.events import Event
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence
from gateway.store import ChatStore
from gateway.store.records import ChatRecord
from gateway.upstream.demo import DEMO_MODEL_ID
from gateway.upstream.router import ModelRouter


def _empty_history() -> dict[str, Any]:
    return {"messages": {}, "currentId": None}


class ChatService:
    def __init__(
        self,
        router: ModelRouter,
        store: ChatStore,
        hub: Hub,
        checkpoint_interval_s: float = 1.0,
        default_model: str = "",
        presence: Presence | None = None,
        replicas: Replicas | None = None,
        background: Background | None = None,
        traces: Traces | None = None,
        max_replies_per_user: int | None = None,
    ) -> None:
        self.router = router
        self.store = store
        self.hub = hub
        self._default_model = default_model
        self.presence = presence or Presence()
        self.replies = RunningReplies(store, hub, replicas)
        self.book = ChatBook(store, self.replies.is_generating)
        self._slots = ReplySlots(max_replies_per_user)
        # The request tasks of pure-API replies running (`stop_pure_replies`).
        self._pure: set[asyncio.Task[Any]] = set()
        self._stopping = False
        runner = ReplyRunner(
            store, hub, self.replies, self.presence, checkpoint_interval_s, traces, self._slots
        )
        # The live traces of this replica's replies (`edge/trace.py`).
        self.traces = runner.traces
        self._runner = runner
        self._starter = ReplyStarter(
            router, store, hub, runner, self.replies, self._slots, background
        )
        self._background = background or Background(router, store, hub)

    async def suggest_title(
        self, principal: Principal, model_hint: str | None, messages: list[Any]
    ) -> str:
        """A title for a conversation (`Background.title`), by the model named or the
        one a reply would take."""
        model = await self.pick_model(model_hint)
        return await self._background.title(principal.user_id, model, messages)

    def replies_running(self) -> int:
        """Replies running in this replica, stored or not (pure-API streams too)."""
        return self._slots.total()

    async def shutdown(self) -> None:
        """Every reply stopped and stored as it is (`RunningReplies.shutdown`), then
        no more draft checkpoints."""
        await self.replies.shutdown()
        await self._runner.drafts.close()

    def stop_pure_replies(self) -> int:
        """A stopping replica past its grace: every pure-API reply's request cancelled
        (`SERVER_STOPPING`), which ends its stream with an error event in its own
        protocol, or its answer with a 503 (a stored reply is stopped and stored by
        `replies.shutdown`); and a new one refused with that 503."""
        self._stopping = True
        for task in list(self._pure):
            task.cancel(SERVER_STOPPING)
        return len(self._pure)

    async def all_replies_ended(self) -> None:
        """Until no reply runs in this replica (and the placeholders of those that
        never started are ended)."""
        await self._slots.idle()
        await self._runner.ends_stored()

    # -- pure API mode -------------------------------------------------------
    async def open_reply(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Nothing stored; the caller consumes the events (and closing them stops the upstream).

        Raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error.
        """
        if self._stopping:
            raise Unavailable(SERVER_STOPPING)
        message_id = f"chatcmpl-{uuid.uuid4().hex}"
        user_id = principal.user_id
        self._slots.take(user_id)
        task = asyncio.current_task()
        if task is not None:
            self._pure.add(task)  # until its reply ends (`ended`), not its request

        def ended() -> None:
            self._slots.release(user_id)
            self._pure.discard(task)

        try:
            events = await self._starter.open(
                ask.model,
                ask.messages,
                ask.params,
                chat_id=None,
                message_id=message_id,
                user_id=principal.user_id,
                parent_id=None,
            )
        except BaseException as exc:
            ended()
            if isinstance(exc, GatewayError):
                refused(user_id, None, message_id, exc)
            if stopped(exc):  # while its model server had not answered yet
                raise Unavailable(SERVER_STOPPING) from None
            raise
        return counted(events, user_id, message_id, ended)

    # -- backend-controlled mode ---------------------------------------------
    async def start_reply(self, principal: Principal, ask: Ask) -> StartedReply:
        """Answer into `history.messages[message_id]` of an existing chat.

        The placeholder is created under the last user message when it is
        missing (reported in `repaired`).  Returns once the chat and placeholder
        are written and the reply's model server has answered, in the reply's own
        task, where a stop reaches it, or the reply was stopped or failed first
        (its end in its events); raises the model server's refusal (an unknown
        model) once the reply's failed end is stored (`ReplyStarter.into`).
        """
        if ask.chat_id is None or ask.message_id is None:
            raise BadRequest("'chat_id' and 'id' are required to answer into a chat")
        check_ids(ask)
        chat, history = await self.book.owned_history(principal, ask.chat_id)
        message_id = ask.message_id
        messages = history["messages"]
        repaired = None
        if message_id in messages:
            check_reply_into(history, messages[message_id], ask.parent_id)
            placeholder = reanswer(messages[message_id], ask.model)
        else:
            parent = tree.last_user_message_id(history)
            if parent is None:
                raise BadRequest("The chat has no user message to answer")
            placeholder = new_placeholder(message_id, parent, ask.model, now_s())
            repaired = f"created assistant placeholder {message_id} under user message {parent}"
        parent_id = placeholder.get("parentId")
        path = (
            tree.path_to(history, parent_id)
            if isinstance(parent_id, str) and parent_id in messages
            else []
        )
        conversation = conversation_for(path, ask.messages)
        record = message_record(chat.id, placeholder)
        chat.current_id = record.id
        chat.updated_at = now_s()
        title = title_for(chat, history)
        return await self._starter.into(chat, record, ask, conversation, title, repaired)

    # -- frontend mode ----------------------------------------------------------
    async def start_turn(
        self, principal: Principal, ask: Ask, tasks: frozenset[str] = frozenset()
    ) -> StartedTurn:
        """Write the turn (creating the chat when `chat_id` is absent), then answer it.

        Returns once the user message and every placeholder are stored; the
        replies stream to `user:<owner>` (every socket of the user).  `tasks`
        are the web app's background tasks for each finished reply (a
        generated title, tags, follow-ups: `background.py`).
        """
        check_ids(ask)
        if ask.temporary:
            return self._starter.temporary(principal, ask)
        if ask.chat_id is None:
            chat, history = new_chat(principal.user_id, ask.model), _empty_history()
        else:
            chat, history = await self.book.owned_history(principal, ask.chat_id)
        return await self._answer(chat, history, ask, new=ask.chat_id is None, tasks=tasks)

    async def say(
        self,
        principal: Principal,
        say: Say,
        *,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        rooms: tuple[str, ...] = (),
        chat: ChatRecord | None = None,
        history: dict[str, Any] | None = None,
        stored: bool = True,
    ) -> StartedTurn:
        """A user message from a raw-WebSocket client (Nadoo, RAGFlow): it goes under
        the chat's current message (or starts a new chat) and is answered.

        `chat`: the chat `say.chat_id` names, as the caller already has it (read and
        found the principal's), so it is not read again, nor its `history` when the
        caller read it with the chat (`ChatBook.owned_history`: one read);
        `stored=False`: made by the caller and not stored yet (a RAGFlow session
        opened by its first question), written with the turn, in one write."""
        model = await self.pick_model(say.model)
        chat_given = chat is not None
        if chat is not None:
            if chat.id != say.chat_id or chat.user_id != principal.user_id:
                raise NotFound("Chat not found")
            if not stored:
                history = _empty_history()
            elif history is None:
                history = await self.book.history(chat)
        elif say.chat_id is None:
            chat, history = new_chat(principal.user_id, model), _empty_history()
        else:
            chat, history = await self.book.owned_history(principal, say.chat_id)
        now = now_s()
        reply_id = str(uuid.uuid4())
        ask = Ask(
            model=model,
            messages=[{"role": "system", "content": system}] if system else [],
            chat_id=chat.id,
            parent_id=history["currentId"],
            user_message={
                "id": str(uuid.uuid4()),
                "role": "user",
                "content": say.text,
                "timestamp": now,
            },
            targets=(ReplyTarget(reply_id, model),),
            rooms=rooms,
            params=params or {},
        )
        new = say.chat_id is None or (chat_given and not stored)
        return await self._answer(chat, history, ask, new=new)

    async def pick_model(self, hint: str | None) -> str:
        """The model a client named, if it exists; else the configured default; else
        the first model the upstreams list.  A name that may be a model of a server
        that cannot be reached, where only the demo model would answer in its place,
        raises (`UpstreamError`): the demo would pass for it.  (A Nadoo application
        id is often no model: with a real model to fall back on, it does.)"""
        known = [model.id for model in await self.router.models()]
        if hint and hint in known:
            return hint
        if hint and not self._default_model and all(m == DEMO_MODEL_ID for m in known):
            with contextlib.suppress(ModelNotFound):
                await self.router.lookup(hint, look_again=False)  # (raises: a server down)
                return hint
        if self._default_model:
            return self._default_model
        if not known:
            raise UpstreamError("No model is available: configure OPENAI_API_BASE_URL")
        return known[0]

    async def _answer(
        self,
        chat: ChatRecord,
        history: dict[str, Any],
        ask: Ask,
        *,
        new: bool,
        tasks: frozenset[str] = frozenset(),
    ) -> StartedTurn:
        """The turn `ask` makes under `history`, planned (`turns.py`) and started."""
        created = now_s()
        turn = await tree_work(len(history["messages"]), plan_turn, history, ask, created)
        chat.current_id = turn.history["currentId"]
        chat.updated_at = created
        # A title the model writes replaces the question's first words, when asked for.
        title = None if "title_generation" in tasks else title_for(chat, turn.history)
        return await self._starter.turn(chat, turn, ask, new=new, title=title, tasks=tasks)
