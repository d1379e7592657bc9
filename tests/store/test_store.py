"""One store suite, run against SQLite and PostgreSQL (127.0.0.1:5432, a fresh database per test)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store import (
    AssistantRecord,
    AssistantStore,
    ChatRecord,
    ChatStore,
    DuplicateKey,
    MessageRecord,
    Pingable,
    Revocation,
    Store,
    UserRecord,
    UserStore,
    open_store,
)
from gateway.store.sql import SQLAssistants, SQLChats, SQLMessages, SQLStore, SQLTags, SQLUsers
from tests.services import fresh_pg_database

# Every migration file shipped, in order: what a migrated store must have applied.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "gateway" / "store" / "schema"
MIGRATIONS = [(int(f.name.split("_", 1)[0]), f.name) for f in sorted(SCHEMA_DIR.glob("*.sql"))]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with AsyncExitStack() as stack:
        url = (
            ""
            if request.param == "sqlite"
            else await stack.enter_async_context(fresh_pg_database())
        )
        opened = await open_store(url, tmp_path)
        try:
            yield opened
        finally:
            await opened.close()


def user(uid: str = "u1", email: str | None = "Alice@Example.com") -> UserRecord:
    return UserRecord(uid, "Alice", email, "user", None, "/user.png", 100, 100, {"ui": {"x": 1}})


def chat(cid: str = "c1", uid: str = "u1", updated: int = 100, **kw: Any) -> ChatRecord:
    return ChatRecord(
        cid, uid, kw.pop("title", "Title"), kw.pop("current_id", None), 100, updated, **kw
    )


def msg(mid: str, parent: str | None, cid: str = "c1", **kw: Any) -> MessageRecord:
    return MessageRecord(
        cid, mid, parent, kw.pop("role", "user"), kw.pop("content", f"text {mid}"), **kw
    )


ODD_FIELDS = {
    "nested": {"a": [1, 2.5, None, True]},
    "unicode": "héllo ✓ 中文",
    "big": 2**53 + 1,
    "f": 0.1,
}


async def test_migrate_twice_is_a_no_op(store: Store) -> None:
    await store.migrate()
    await store.migrate()
    assert await store.migrations() == MIGRATIONS
    assert [name for _, name in MIGRATIONS][:2] == ["0001_initial.sql", "0002_assistants.sql"]


async def test_users_and_case_insensitive_email(store: Store) -> None:
    await store.create_user(user())
    assert (await store.get_user("u1")) == user(email="alice@example.com")
    assert (await store.get_user_by_email("ALICE@example.COM")) is not None
    with pytest.raises(DuplicateKey):
        await store.create_user(user("u2", "alice@EXAMPLE.com"))
    with pytest.raises(DuplicateKey):
        await store.create_user(user("u1", "other@example.com"))
    assert await store.count_users() == 1
    updated = user(email="new@example.com")
    updated.role = "admin"
    await store.update_user(updated)
    assert (await store.get_user("u1")).role == "admin"  # type: ignore[union-attr]
    assert [u.id for u in await store.list_users()] == ["u1"]


async def test_the_first_admin_is_the_oldest_admin_account(store: Store) -> None:
    assert await store.first_admin() is None
    dated = [("u-c", 300, "admin"), ("u-b", 100, "user"), ("u-z", 200, "admin")]
    for uid, created, role in dated:
        record = dataclasses.replace(user(uid, f"{uid}@example.com"), role=role)
        record.created_at = created
        await store.create_user(record)
    assert (await store.first_admin()).id == "u-z"  # type: ignore[union-attr]
    same_second = dataclasses.replace(user("u-a", "u-a@example.com"), role="admin")
    same_second.created_at = 200
    await store.create_user(same_second)
    assert (await store.first_admin()).id == "u-a"  # type: ignore[union-attr]


async def test_api_keys(store: Store) -> None:
    await store.create_user(user())
    await store.add_api_key("hash1", "u1", 5)
    assert (await store.user_for_api_key("hash1")).id == "u1"  # type: ignore[union-attr]
    assert await store.user_for_api_key("nope") is None


async def test_chat_round_trip_keeps_unknown_fields(store: Store) -> None:
    record = chat(extra={"models": ["m"], **ODD_FIELDS}, meta={"tags": ["x"]}, current_id="m2")
    messages = [msg("m1", None, fields=ODD_FIELDS), msg("m2", "m1", role="assistant", done=True)]
    await store.insert_chat(record, messages)
    assert await store.get_chat("c1") == record
    got = await store.get_messages("c1")
    assert [m.id for m in got] == ["m1", "m2"] and [m.position for m in got] == [0, 1]
    assert got[0].fields == ODD_FIELDS and got[0].done is None and got[1].done is True
    with pytest.raises(DuplicateKey):
        await store.insert_chat(chat(), [])


async def test_a_chat_and_its_messages_are_one_read_and_only_the_owners(store: Store) -> None:
    """`get_chat_and_messages`: what `get_chat` and `get_messages` read, in one call;
    None for another user's chat and an unknown one."""
    record = chat(current_id="m3", meta={"tags": ["x"]})
    await store.insert_chat(record, [msg("m1", None), msg("m2", "m1"), msg("m3", "m1")])
    await store.insert_chat(chat("c2"), [msg("x1", None, cid="c2")])
    found = await store.get_chat_and_messages("c1", "u1")
    assert found is not None
    assert found == (await store.get_chat("c1"), await store.get_messages("c1"))
    assert found[0] == record and [m.id for m in found[1]] == ["m1", "m2", "m3"]
    assert await store.get_chat_and_messages("c1", "u2") is None
    assert await store.get_chat_and_messages("nope", "u1") is None
    bare = await store.get_chat_and_messages("c2", "u1")
    assert bare is not None and [m.id for m in bare[1]] == ["x1"]


async def test_save_chat_upserts_and_keeps_positions(store: Store) -> None:
    await store.insert_chat(chat(), [msg("m1", None), msg("m2", "m1")])
    changed = chat(title="New", current_id="m3", updated=200)
    await store.save_chat(
        changed,
        [msg("m1", None, content="edited"), msg("m3", "m1")],
        columns=("title", "current_id", "updated_at"),
    )
    got = {m.id: m for m in await store.get_messages("c1")}
    assert got["m1"].content == "edited" and got["m1"].position == 0
    assert got["m2"].position == 1 and got["m3"].position > 1
    assert (await store.get_chat("c1")) == changed


async def test_update_message_touches_one_row_and_checkpoint_only_the_draft(store: Store) -> None:
    await store.insert_chat(chat(), [msg(f"m{i}", f"m{i - 1}" if i else None) for i in range(5)])
    before = await store.get_messages("c1")
    target = msg("m4", "m3", role="assistant", content="", done=False)
    await store.update_message(target)
    await store.checkpoint_drafts([("c1", "m4", "half a rep")])
    after = await store.get_messages("c1")
    assert after[:4] == before[:4]
    assert after[4].content == "" and after[4].done is False and after[4].draft == "half a rep"
    assert [m.id for m in await store.unfinished_messages()] == ["m4"]
    target.content, target.done, target.draft = "whole reply", True, None
    await store.update_message(target)
    assert await store.unfinished_messages() == []
    await store.checkpoint_drafts([("c1", "m4", "a late draft")])  # never over a finished row
    assert (await store.get_message("c1", "m4")).draft is None  # type: ignore[union-attr]
    assert (await store.get_message("c1", "m4")).content == "whole reply"  # type: ignore[union-attr]
    # A crash's finalising, read before the reply's own end was written, keeps that end.
    stale = msg("m4", "m3", role="assistant", content="half a rep", done=True)
    await store.finish_unfinished(stale)
    assert (await store.get_message("c1", "m4")).content == "whole reply"  # type: ignore[union-attr]
    await store.update_message(msg("m3", "m2", role="assistant", content="", done=False))
    await store.finish_unfinished(msg("m3", "m2", role="assistant", content="draft", done=True))
    assert (await store.get_message("c1", "m3")).content == "draft"  # type: ignore[union-attr]


async def test_list_filters_paging_and_search(store: Store) -> None:
    for i in range(5):
        await store.insert_chat(
            chat(f"c{i}", updated=100 + i, title=f"chat {i}"),
            [msg("m", None, cid=f"c{i}", content=f"body {i} Needle" if i == 2 else "x")],
        )
    await store.insert_chat(chat("other", "u2"), [])
    assert [c.id for c in await store.list_chats("u1")] == ["c4", "c3", "c2", "c1", "c0"]
    assert [c.id for c in await store.list_chats("u1", skip=1, limit=2)] == ["c3", "c2"]
    assert [c.id for c in await store.list_chats("u1", skip=3)] == ["c1", "c0"]
    assert [c.id for c in await store.list_chats("u1", text="needle")] == ["c2"]
    assert [c.id for c in await store.list_chats("u1", text="CHAT 3")] == ["c3"]
    c1 = await store.get_chat("c1")
    assert c1 is not None
    c1.pinned, c1.archived, c1.folder_id = True, True, "f1"
    await store.change_chat(c1, "pinned", "archived", "folder_id")
    assert [c.id for c in await store.list_chats("u1", pinned=True, archived=None)] == ["c1"]
    assert "c1" not in [c.id for c in await store.list_chats("u1")]
    assert [c.id for c in await store.list_chats("u1", folder_id="f1", archived=None)] == ["c1"]
    # Counted by the database, with the list's filter: the owner's only.
    assert [await store.count_chats("u1", archived=a) for a in (False, True, None)] == [4, 1, 5]
    assert await store.set_archived_all("u1", True) == 4
    assert await store.list_chats("u1") == []
    assert len(await store.list_chats("u1", archived=True)) == 5
    assert await store.count_chats("u1", archived=True) == 5
    assert await store.count_chats("u2", archived=None) == 1


async def test_share_id_lookup(store: Store) -> None:
    await store.insert_chat(chat(share_id="s1"), [])
    assert (await store.get_chat_by_share_id("s1")).id == "c1"  # type: ignore[union-attr]
    assert await store.get_chat_by_share_id("s2") is None


async def test_writes_of_a_chat_touch_only_their_own_columns(store: Store) -> None:
    # A flag set and a tree written, each from a copy read before the other's write:
    # neither undoes the other (a pin lost to an edit, an edit to a pin).
    await store.insert_chat(chat(current_id="m1"), [msg("m1", None)])
    flagged, edited = await store.get_chat("c1"), await store.get_chat("c1")
    assert flagged is not None and edited is not None
    flagged.pinned, flagged.share_id = True, "s1"
    await store.change_chat(flagged, "pinned", "share_id")
    edited.title, edited.current_id = "Edited", "m2"
    await store.save_chat(edited, [msg("m2", "m1")], columns=("title", "current_id"))
    both = await store.get_chat("c1")
    assert both is not None and (both.pinned, both.share_id) == (True, "s1")
    assert (both.title, both.current_id) == ("Edited", "m2")
    with pytest.raises(ValueError):
        await store.change_chat(both, "id")  # a row's id is not changed so
    # Messages removed with a write, at once.
    await store.save_chat(both, [], removed=["m2"])
    assert [m.id for m in await store.get_messages("c1")] == ["m1"]


async def test_a_chat_put_in_place_and_deleted_with_its_snapshot(store: Store) -> None:
    await store.insert_chat(chat(share_id="s1"), [msg("m1", None)])
    for text in ("first", "second"):  # put twice: the second replaces the first whole
        snapshot = chat("s1", "shared:u1", title=text)
        await store.put_chat(snapshot, [msg("m1", None, cid="s1", content=text)])
    got = await store.get_chat("s1")
    assert got is not None and got.title == "second"
    assert [m.content for m in await store.get_messages("s1")] == ["second"]
    # Deleting the chat deletes the snapshot its share id names, in one go.
    assert await store.delete_chat("c1") is True
    assert await store.get_chat("s1") is None and await store.get_messages("s1") == []
    assert await store.delete_chat("c1") is False


async def test_tags_lifecycle_and_delete_cascades(store: Store) -> None:
    await store.insert_chat(chat(), [msg("m1", None)])
    await store.insert_chat(chat("c2"), [])
    await store.add_tag("u1", "c1", "Work Stuff")
    await store.add_tag("u1", "c1", "Work Stuff")
    await store.add_tag("u1", "c1", "b")
    await store.add_tag("u1", "c2", "b")
    assert await store.chat_tags("c1") == [("work_stuff", "Work Stuff"), ("b", "b")]
    assert [c.id for c in await store.list_chats("u1", tag="Work Stuff")] == ["c1"]
    await store.remove_tag("u1", "c1", "work stuff")
    assert await store.user_tags("u1") == [("b", "b")]
    assert await store.delete_chat("c1") is True
    assert await store.delete_chat("c1") is False
    assert await store.get_messages("c1") == []
    assert await store.user_tags("u1") == [("b", "b")]
    await store.clear_chat_tags("c2")
    assert await store.user_tags("u1") == []
    await store.insert_chat(chat("c3"), [msg("x", None, cid="c3")])
    assert await store.delete_user_chats("u1") == 2
    assert await store.list_chats("u1", archived=None) == []


def assistant(aid: str, name: str, uid: str = "u1", created: int = 1) -> AssistantRecord:
    return AssistantRecord(aid, uid, name, {"llm": {"model_name": "m"}}, created, created)


async def test_upsert_messages_appends_and_replaces(store: Store) -> None:
    await store.insert_chat(chat(), [msg("m1", None)])
    await store.upsert_messages("c1", [])
    await store.upsert_messages("c1", [msg("m2", "m1"), msg("m1", None, content="again")])
    got = await store.get_messages("c1")
    assert [(m.id, m.position, m.content) for m in got] == [
        ("m1", 0, "again"),
        ("m2", 1, "text m2"),
    ]


async def test_finish_reply_titles_only_a_chat_still_untitled(store: Store) -> None:
    await store.insert_chat(chat(title="New Chat"), [msg("a", None, role="assistant", done=False)])
    done = msg("a", None, role="assistant", content="answer", done=True)
    assert await store.finish_reply(done, 300, "Asked", ("", "New Chat")) is True
    record = await store.get_chat("c1")
    assert record is not None and (record.title, record.updated_at) == ("Asked", 300)
    assert (await store.get_message("c1", "a")) == dataclasses.replace(done, position=0)
    assert await store.finish_reply(done, 400, "Other", ("", "New Chat")) is False
    assert await store.finish_reply(done, 500) is False
    record = await store.get_chat("c1")
    assert record is not None and (record.title, record.updated_at) == ("Asked", 500)


async def test_assistants(store: Store) -> None:
    await store.create_assistant(assistant("a1", "First", created=1))
    await store.create_assistant(assistant("a2", "Second", created=2))
    await store.create_assistant(assistant("a3", "First", uid="u2"))
    with pytest.raises(DuplicateKey):
        await store.create_assistant(assistant("a4", "First"))
    assert await store.get_assistant("a1") == assistant("a1", "First", created=1)
    assert [a.id for a in await store.list_assistants("u1")] == ["a2", "a1"]
    assert [a.id for a in await store.list_assistants("u1", newest_first=False)] == ["a1", "a2"]
    assert [a.id for a in await store.list_assistants("u1", skip=1, limit=1)] == ["a1"]
    assert [a.id for a in await store.list_assistants("u1", name="Second")] == ["a2"]
    assert [a.id for a in await store.list_assistants("u1", assistant_id="a3")] == []
    renamed = assistant("a2", "First", created=2)
    with pytest.raises(DuplicateKey):
        await store.update_assistant(renamed)
    renamed.name, renamed.config, renamed.updated_at_ms = "Third", {"x": [1]}, 9
    await store.update_assistant(renamed)
    assert await store.get_assistant("a2") == renamed
    # Deleting an assistant leaves its sessions: they are chats of its owner.
    await store.insert_chat(chat("s1", assistant_id="a2"), [])
    assert await store.delete_assistant("a2") is True
    assert await store.delete_assistant("a2") is False
    assert [c.id for c in await store.list_chats("u1", assistant_id="a2")] == ["s1"]


async def test_remove_user_takes_everything_of_theirs(store: Store) -> None:
    for uid, email in (("u1", "a@example.com"), ("u2", "b@example.com")):
        await store.create_user(user(uid, email))
        await store.add_api_key(f"key-{uid}", uid, 1)
        await store.insert_chat(chat(f"c-{uid}", uid), [msg("m", None, cid=f"c-{uid}")])
        await store.add_tag(uid, f"c-{uid}", "t")
        await store.create_assistant(assistant(f"a-{uid}", "A", uid=uid))
    assert await store.remove_user("u1", 1000) == [Revocation("u1", "", "removed", 1000)]
    assert await store.get_user("u1") is None and await store.is_removed("u1")
    assert await store.user_for_api_key("key-u1") is None
    assert await store.get_chat("c-u1") is None and await store.get_messages("c-u1") == []
    assert await store.user_tags("u1") == [] and await store.get_assistant("a-u1") is None
    # Another user's rows stay; a second removal only moves the time on.
    assert not await store.is_removed("u2") and await store.get_chat("c-u2") is not None
    assert await store.user_tags("u2") == [("t", "t")] and await store.get_assistant("a-u2")
    assert (await store.user_for_api_key("key-u2")) is not None
    assert await store.remove_user("u1", 2000) == []
    assert await store.revocations_since(1500) == [Revocation("u1", "", "removed", 2000)]


async def test_revoke_api_keys_of_one_kind(store: Store) -> None:
    await store.create_user(user())
    await store.add_api_key("web", "u1", 1)
    await store.add_api_key("rag", "u1", 1, kind="ragflow")
    revoked = await store.revoke_api_keys("u1", "openwebui", 50)
    assert revoked == [Revocation("u1", "web", "openwebui key revoked", 50)]
    assert await store.user_for_api_key("web") is None
    assert await store.user_for_api_key("rag") is not None
    assert await store.revocations_since(50) == revoked and await store.revocations_since(51) == []
    assert not await store.is_removed("u1")
    await store.ping()


def _methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and name[0] != "_"}


def test_the_store_is_its_aggregates_put_together() -> None:
    """Each narrow protocol is implemented by its own classes, and no two aggregates
    define the same method (a shadowed one would silently win in `SQLStore`)."""
    parts = {
        UserStore: [SQLUsers],
        ChatStore: [SQLChats, SQLMessages, SQLTags],
        AssistantStore: [SQLAssistants],
    }
    seen: set[str] = set()
    for protocol, classes in parts.items():
        implemented = set().union(*(_methods(cls) for cls in classes))
        assert implemented == _methods(protocol), protocol.__name__
        assert not implemented & seen
        seen |= implemented
    assert SQLStore.__mro__[1:6] == (SQLUsers, SQLChats, SQLMessages, SQLTags, SQLAssistants)
    assert _methods(Store) | _methods(Pingable) | seen <= {
        name for name in dir(SQLStore) if name[0] != "_"
    }


async def test_two_replicas_migrate_one_postgres_at_once(pg_url: str, tmp_path: Path) -> None:
    first, second = await asyncio.gather(open_store(pg_url, tmp_path), open_store(pg_url, tmp_path))
    assert await first.migrations() == await second.migrations() == MIGRATIONS
    await first.close()
    await second.close()


async def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        await open_store("mysql://x", tmp_path)


async def test_api_keys_listed_used_and_revoked_by_id(store: Store) -> None:
    await store.create_user(user("u1"))
    await store.create_user(user("u2", "bob@example.com"))
    first, second, other = "a1" * 32, "b2" * 32, "c3" * 32
    await store.add_api_key(first, "u1", 10, hint="sk-aaa…aaaa")
    await store.add_api_key(second, "u1", 20, kind="ragflow", hint="ragflo…bbbb")
    await store.add_api_key(other, "u2", 30)
    mine = await store.list_api_keys("u1")
    assert [(k.id, k.kind, k.hint, k.created_at, k.last_used_ms) for k in mine] == [
        (second[:12], "ragflow", "ragflo…bbbb", 20, None),
        (first[:12], "openwebui", "sk-aaa…aaaa", 10, None),
    ]
    assert [k.user_id for k in await store.list_api_keys()] == ["u2", "u1", "u1"]
    await store.key_used(first, 12_345)
    assert (await store.list_api_keys("u1"))[1].as_dict()["last_used_at"] == 12
    # Not another user's, not a malformed id, not a prefix shorter than an id.
    assert await store.revoke_api_key(other[:12], 99, user_id="u1") == []
    assert await store.revoke_api_key("%", 99) == []
    assert await store.revoke_api_key(first[:6], 99) == []
    (revoked,) = await store.revoke_api_key(first[:12], 99, user_id="u1")
    assert (revoked.user_id, revoked.key_hash, revoked.at_ms) == ("u1", first, 99)
    assert await store.user_for_api_key(first) is None
    assert [r.key_hash for r in await store.revocations_since(99)] == [first]
    (by_admin,) = await store.revoke_api_key(other[:12], 100)
    assert by_admin.user_id == "u2" and await store.user_for_api_key(other) is None


async def test_a_replica_holds_at_most_its_pool_size_of_postgres_connections(
    pg_url: str, tmp_path: Path
) -> None:
    # GATEWAY_DATABASE_POOL_SIZE: more calls at once wait for a connection.  Three
    # calls wait on a lock the test holds: two run (and wait), the third has none.
    key = uuid.uuid4().int % 2**31
    watcher = await asyncpg.connect(pg_url)
    store = await open_store(pg_url, tmp_path, pool_size=2)
    waiting: list[asyncio.Task[Any]] = []
    try:
        await watcher.execute("SELECT pg_advisory_lock($1)", key)
        waiting = [
            asyncio.create_task(store.db.fetch(f"SELECT pg_advisory_xact_lock_shared({key})"))
            for _ in range(3)
        ]

        async def running() -> int:
            count = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                f"%pg_advisory_xact_lock_shared({key})%",
            )
            return int(count)

        deadline = time.monotonic() + 10
        while await running() < 2:
            assert time.monotonic() < deadline, "two calls never ran"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert await running() == 2, "the third call waits for one of the pool's two"
        await watcher.execute("SELECT pg_advisory_unlock($1)", key)
        await asyncio.wait_for(asyncio.gather(*waiting), 10)  # then it runs too
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await store.close()
        await watcher.close()
