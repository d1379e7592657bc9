"""Planning one frontend-mode turn: example turns as a table, the errors, then a property."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat import tree
from gateway.chat.turns import plan_turn
from gateway.commands import Ask, ReplyTarget
from gateway.errors import BadRequest

NOW_S = 1_700_000_000


def chat(*messages: dict[str, Any], current: str | None = None) -> dict[str, Any]:
    """A consistent stored history from messages that name their `id` and `parentId`."""
    return tree.normalize({"messages": {m["id"]: m for m in messages}, "currentId": current})


def user(mid: str, parent: str | None, content: str = "q") -> dict[str, Any]:
    return {"id": mid, "parentId": parent, "role": "user", "content": content, "timestamp": 1}


def answer(mid: str, parent: str, content: str = "a", **fields: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "parentId": parent,
        "role": "assistant",
        "content": content,
        "done": True,
        "model": "old-model",
        "timestamp": 2,
        **fields,
    }


def ask(**fields: Any) -> Ask:
    return Ask(model=fields.pop("model", "gpt"), messages=[], chat_id="c1", **fields)


def placeholder(mid: str, parent: str, model: str = "gpt", **fields: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "parentId": parent,
        "role": "assistant",
        "content": "",
        "done": False,
        "model": model,
        "timestamp": NOW_S,
        **fields,
    }


# u1 ─▶ a1 (answered): the chat after its first turn.
ONE_EXCHANGE = chat(user("u1", None, "hi"), answer("a1", "u1", "hello"), current="a1")

# Every turn the web app sends, as (history, request); the tests below check
# what each must add and that none of them touches its inputs.
TURNS: dict[str, tuple[dict[str, Any], Ask]] = {
    "first turn": (
        {},
        ask(message_id="a1", user_message={"id": "u1", "parentId": None, "content": "hi"}),
    ),
    "follow-up": (
        ONE_EXCHANGE,
        ask(message_id="a2", parent_id="a1", user_message={"id": "u2", "parentId": "a1"}),
    ),
    "regenerate": (
        ONE_EXCHANGE,
        ask(message_id="a1b", parent_id=None, user_message={"id": "u1", "parentId": None}),
    ),
    "several models": (
        ONE_EXCHANGE,
        ask(
            message_id="a2",
            parent_id="a1",
            user_message={"id": "u2", "parentId": "a1", "content": "again"},
            targets=(ReplyTarget("a2", "gpt", 0), ReplyTarget("a3", "claude", 1)),
        ),
    ),
    "continue": (ONE_EXCHANGE, ask(message_id="a1", parent_id="u1", model="new-model")),
    "no user message": (ONE_EXCHANGE, ask(message_id="a1b")),
}


@pytest.mark.parametrize("name", TURNS)
def test_inputs_are_never_mutated(name: str) -> None:
    history, request = TURNS[name]
    history_before = copy.deepcopy(history)
    user_message_before = copy.deepcopy(request.user_message)
    plan_turn(history, request, NOW_S)
    assert history == history_before
    assert request.user_message == user_message_before


@pytest.mark.parametrize("name", TURNS)
def test_every_turn_is_consistent_and_points_at_its_first_reply(name: str) -> None:
    history, request = TURNS[name]
    turn = plan_turn(history, request, NOW_S)
    tree.validate(turn.history)
    first_reply = request.reply_targets()[0].message_id
    assert turn.history["currentId"] == first_reply
    assert [target for _, target in turn.replies] == list(request.reply_targets())
    for message, _ in turn.replies:
        assert message in turn.writes
    for message in turn.writes:
        stored = turn.history["messages"][message["id"]]
        assert without_children(stored) == without_children(message), (
            "what is written is what the history holds"
        )


@pytest.mark.parametrize("history", [{}, {"messages": {}, "currentId": None}])
def test_first_turn_of_a_new_chat(history: dict[str, Any]) -> None:
    request = ask(
        message_id="a1",
        user_message={"id": "u1", "parentId": None, "content": "hi", "files": []},
    )
    turn = plan_turn(history, request, NOW_S)
    question: dict[str, Any] = {
        "id": "u1",
        "parentId": None,
        "role": "user",
        "content": "hi",
        "files": [],
    }
    reply = placeholder("a1", "u1")
    assert turn.writes == [question, reply]
    assert turn.replies == [(reply, ReplyTarget("a1", "gpt"))]
    assert turn.question_id == "u1"
    assert turn.history == {
        "messages": {
            "u1": {**question, "childrenIds": ["a1"]},
            "a1": {**reply, "childrenIds": []},
        },
        "currentId": "a1",
    }


def test_follow_up_goes_under_the_previous_answer() -> None:
    history, request = TURNS["follow-up"]
    turn = plan_turn(history, request, NOW_S)
    assert turn.writes == [
        {"id": "u2", "parentId": "a1", "role": "user"},
        placeholder("a2", "u2"),
    ]
    assert [m["id"] for m in tree.current_path(turn.history)] == ["u1", "a1", "u2", "a2"]
    assert turn.history["messages"]["a1"]["childrenIds"] == ["u2"]


def test_regenerate_adds_a_sibling_and_leaves_the_old_answer() -> None:
    history, request = TURNS["regenerate"]
    turn = plan_turn(history, request, NOW_S)
    assert turn.writes == [placeholder("a1b", "u1")], "the user message exists: not rewritten"
    assert turn.question_id == "u1"
    assert turn.history["messages"]["u1"]["childrenIds"] == ["a1", "a1b"]
    assert turn.history["messages"]["a1"] == ONE_EXCHANGE["messages"]["a1"]
    assert turn.history["messages"]["u1"]["content"] == "hi"


def test_several_models_answer_the_same_question() -> None:
    history, request = TURNS["several models"]
    turn = plan_turn(history, request, NOW_S)
    # modelIdx 0 is a real position, not "absent".
    replies = [placeholder("a2", "u2", modelIdx=0), placeholder("a3", "u2", "claude", modelIdx=1)]
    assert turn.writes[1:] == replies
    assert [message for message, _ in turn.replies] == replies
    assert turn.history["messages"]["u2"]["childrenIds"] == ["a2", "a3"]
    assert turn.history["currentId"] == "a2"


def test_continue_empties_the_existing_answer() -> None:
    history = chat(
        user("u1", None),
        answer(
            "a1",
            "u1",
            "partial",
            error={"content": "upstream timed out"},
            usage={"prompt_tokens": 3, "completion_tokens": 4},
            cancelled=True,
            sources=[{"url": "https://example.org"}],
            modelIdx=0,
        ),
        current="a1",
    )
    turn = plan_turn(history, ask(message_id="a1", parent_id="u1", model="new-model"), NOW_S)
    # Kept: the answer's place in the tree, its timestamp and anything a
    # client attached; dropped: what described the old answer's ending.
    emptied = {
        "id": "a1",
        "parentId": "u1",
        "childrenIds": [],
        "role": "assistant",
        "content": "",
        "done": False,
        "model": "new-model",
        "timestamp": 2,
        "sources": [{"url": "https://example.org"}],
        "modelIdx": 0,
    }
    assert turn.writes == [emptied]
    assert turn.history["messages"]["a1"] == emptied
    assert turn.history["messages"]["u1"]["childrenIds"] == ["a1"], "no new sibling"
    assert turn.question_id == "u1"


def test_without_user_message_the_replies_go_under_parent_id() -> None:
    history = chat(user("u1", None), answer("a1", "u1"), user("u2", "a1"), current="u2")
    turn = plan_turn(history, ask(message_id="a1b", parent_id="u1"), NOW_S)
    assert turn.question_id == "u1"
    assert turn.writes == [placeholder("a1b", "u1")]
    assert turn.history["messages"]["u1"]["childrenIds"] == ["a1", "a1b"]


def test_without_user_message_or_parent_the_last_user_message_on_the_current_path() -> None:
    # u1 ─▶ a1 ─┬▶ u2 ─▶ a2   (current)
    #           └▶ u3         (newer in the dict, but on another branch)
    history = chat(
        user("u1", None),
        answer("a1", "u1"),
        user("u2", "a1"),
        answer("a2", "u2"),
        user("u3", "a1"),
        current="a2",
    )
    turn = plan_turn(history, ask(message_id="a2b"), NOW_S)
    assert turn.question_id == "u2"
    assert turn.writes == [placeholder("a2b", "u2")]


@pytest.mark.parametrize(
    ("parent_id", "user_message_parent", "expected"),
    [
        ("a1b", "a1", "a1b"),  # both given: the request's parent_id wins
        (None, "a1", "a1"),
        ("a1b", None, "a1b"),
        (None, None, None),  # a new root: Open WebUI's first message of a branchless chat
    ],
)
def test_which_parent_the_new_user_message_gets(
    parent_id: str | None, user_message_parent: str | None, expected: str | None
) -> None:
    history = chat(user("u1", None), answer("a1", "u1"), answer("a1b", "u1"), current="a1")
    user_message = {"id": "u2", "content": "q"}
    if user_message_parent is not None:
        user_message["parentId"] = user_message_parent
    turn = plan_turn(
        history, ask(message_id="a2", parent_id=parent_id, user_message=user_message), NOW_S
    )
    assert turn.writes[0]["parentId"] == expected
    assert turn.history["messages"]["u2"]["parentId"] == expected


def test_childrenids_sent_by_the_client_are_ignored() -> None:
    request = ask(
        message_id="a2",
        parent_id="a1",
        user_message={"id": "u2", "parentId": "a1", "childrenIds": ["a1", "ghost"]},
    )
    turn = plan_turn(ONE_EXCHANGE, request, NOW_S)
    assert "childrenIds" not in turn.writes[0]
    assert turn.history["messages"]["u2"]["childrenIds"] == ["a2"]
    tree.validate(turn.history)


def test_user_message_role_is_forced() -> None:
    request = ask(message_id="a1", user_message={"id": "u1", "role": "assistant"})
    assert plan_turn({}, request, NOW_S).writes[0]["role"] == "user"


@pytest.mark.parametrize(
    ("history", "request_", "error"),
    [
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="u1", parent_id="u1"),
            r"'u1' is a user message",
            id="answer into a user message",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="a2", parent_id="ghost", user_message={"id": "u2"}),
            r"'ghost' does not exist",
            id="unknown parent_id with a user message",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="a2", user_message={"id": "u2", "parentId": "ghost"}),
            r"'ghost' does not exist",
            id="unknown parentId in the user message",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="a2", parent_id="ghost"),
            r"'ghost' does not exist",
            id="unknown parent_id, no user message",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="a1", parent_id="ghost"),
            r"'ghost' \(the question to answer\) does not exist",
            id="continue under an unknown parent_id",
        ),
        pytest.param(
            {},
            ask(message_id="a1"),
            r"send 'user_message' or a 'parent_id'",
            id="nothing to answer in an empty chat",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(
                user_message={"id": "u2"},
                targets=(ReplyTarget("a2", "gpt"), ReplyTarget("a2", "other")),
            ),
            r"needs an id of its own",
            id="two replies into one id",
        ),
        pytest.param(
            ONE_EXCHANGE,
            ask(message_id="u2", user_message={"id": "u2"}),
            r"'u2' is the new question's id",
            id="a reply into its new question's id",
        ),
        pytest.param(
            chat(answer("a0", "s0"), {"id": "s0", "role": "system", "content": "be brief"}),
            ask(message_id="a1"),
            r"send 'user_message' or a 'parent_id'",
            id="nothing to answer: no user message anywhere",
        ),
    ],
)
def test_bad_turns_are_refused(history: dict[str, Any], request_: Ask, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        plan_turn(history, request_, NOW_S)


# -- property ----------------------------------------------------------------
@st.composite
def chats(draw: st.DrawFn) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 12))):
        parent = draw(st.none() | st.sampled_from(sorted(messages))) if messages else None
        messages[f"m{i}"] = {
            "id": f"m{i}",
            "parentId": parent,
            "role": draw(st.sampled_from(["user", "assistant"])),
            "content": draw(st.text(max_size=4)),
            "done": True,
        }
    current = draw(st.none() | st.sampled_from(sorted(messages))) if messages else None
    return tree.normalize({"messages": messages, "currentId": current})


def without_children(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "childrenIds"}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_turn_keeps_the_tree_valid_and_every_old_message(data: st.DataObject) -> None:
    history = data.draw(chats(), label="history")
    ids = sorted(history["messages"])
    users = [mid for mid in ids if history["messages"][mid]["role"] == "user"]
    parent = data.draw(st.none() | st.sampled_from(ids), label="parent") if ids else None
    # A new question, or a regenerate of one already asked.
    question = data.draw(st.sampled_from(["new-user", *users]), label="question")
    targets = tuple(
        ReplyTarget(f"r{i}", f"model{i}", i) for i in range(data.draw(st.integers(1, 3)))
    )
    request = ask(
        message_id="r0",
        parent_id=parent,
        user_message={"id": question, "content": "q", "childrenIds": ids[:2]},
        targets=targets,
    )
    before = copy.deepcopy(history)

    turn = plan_turn(history, request, NOW_S)

    tree.validate(turn.history)
    assert history == before
    assert set(turn.history["messages"]) == {*ids, question, *(t.message_id for t in targets)}
    for mid, message in before["messages"].items():
        assert without_children(turn.history["messages"][mid]) == without_children(message)
    if question == "new-user":
        assert turn.history["messages"][question]["parentId"] == parent
    for target in targets:
        assert turn.history["messages"][target.message_id]["parentId"] == question
    assert turn.history["currentId"] == "r0"
