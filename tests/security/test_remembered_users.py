"""A JWT's user is read from the store once per access-recheck period, and a removal
is never outlived by what was remembered (application/accounts.py, StoreDirectory).

A real SQLite store; the reads are counted by wrapping its `get_user`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.application import accounts
from gateway.application.accounts import StoreDirectory
from gateway.errors import AuthError
from gateway.store import Store, UserRecord, open_store


class Counted:
    """The store's `get_user`, counted, and held back while `gate` is clear."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()  # a read is held at the gate
        self._get_user = store.get_user

    async def get_user(self, user_id: str) -> UserRecord | None:
        self.reads += 1
        found = await self._get_user(user_id)
        if not self.gate.is_set():
            self.waiting.set()
        await self.gate.wait()
        return found


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store("", tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


def counted(store: Store, monkeypatch: pytest.MonkeyPatch) -> Counted:
    reads = Counted(store)
    monkeypatch.setattr(store, "get_user", reads.get_user)
    return reads


CLAIMS: dict[str, Any] = {"name": "Ann"}


async def test_a_user_is_read_once_per_period(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted(store, monkeypatch)
    directory = StoreDirectory(store, {}, remember_s=0.3)
    first = await directory.principal_for_jwt("ann", CLAIMS)  # made just in time
    assert (first.user_id, first.name, first.role) == ("ann", "Ann", "user")
    for _ in range(50):
        assert await directory.principal_for_jwt("ann", CLAIMS) == first
    assert reads.reads == 1
    await asyncio.sleep(0.35)
    assert await directory.principal_for_jwt("ann", CLAIMS) == first
    assert reads.reads == 2


async def test_nothing_is_remembered_when_the_period_is_zero(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted(store, monkeypatch)
    directory = StoreDirectory(store, {})
    for _ in range(3):
        await directory.principal_for_jwt("bob", CLAIMS)
    assert reads.reads == 3


async def test_a_removed_user_is_refused_once_forgotten(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = StoreDirectory(store, {}, remember_s=60)
    await directory.principal_for_jwt("cat", CLAIMS)
    await accounts.remove_user(store, "cat")
    directory.forget("cat")  # what the access guard does when it sees the removal
    with pytest.raises(AuthError, match="removed"):
        await directory.principal_for_jwt("cat", CLAIMS)


async def test_a_read_that_overlapped_a_removal_is_not_remembered(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted(store, monkeypatch)
    directory = StoreDirectory(store, {}, remember_s=60)
    await directory.principal_for_jwt("dan", CLAIMS)
    directory.forget("dan")  # read again from here on
    reads.gate.clear()
    # A request read the user just before the removal was committed and seen...
    late = asyncio.create_task(directory.principal_for_jwt("dan", CLAIMS))
    await asyncio.wait_for(reads.waiting.wait(), 5)
    await accounts.remove_user(store, "dan")
    directory.forget("dan")
    reads.gate.set()
    assert (await late).user_id == "dan"  # that request was authenticated before
    # ...but what it read is not kept: the next request finds the removal.
    with pytest.raises(AuthError, match="removed"):
        await directory.principal_for_jwt("dan", CLAIMS)


async def test_remembered_users_are_bounded(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "MAX_REMEMBERED_USERS", 5)
    reads = counted(store, monkeypatch)
    directory = StoreDirectory(store, {}, remember_s=60)
    for index in range(8):
        await directory.principal_for_jwt(f"u{index}", CLAIMS)
    assert len(directory._principals) == 5
    before = reads.reads
    await directory.principal_for_jwt("u7", CLAIMS)  # among the newest: remembered
    assert reads.reads == before
    await directory.principal_for_jwt("u0", CLAIMS)  # the oldest went first
    assert reads.reads == before + 1

