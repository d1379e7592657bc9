"""Users and API keys from the store: sign-up, sign-in, just-in-time users.

`StoreDirectory` is the `UserDirectory` the authenticator uses once the
store exists: a verified JWT for an unknown id creates that user (role
`user`, name from the `name` claim), API keys are looked up by their hash,
and keys from `GATEWAY_API_KEYS` still work (their users are created on
first use too).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.auth import Principal
from gateway.errors import BadRequest, Conflict
from gateway.keys import check_password, hash_api_key, hash_password, new_api_key
from gateway.store import Store, UserRecord
from gateway.store.errors import Conflict as StoreConflict

DEFAULT_AVATAR = "/user.png"
ROLES = ("admin", "user", "pending")


def principal_of(user: UserRecord) -> Principal:
    return Principal(user.id, user.name, user.role)


class StoreDirectory:
    def __init__(self, store: Store, static_keys: Mapping[str, str]) -> None:
        self.store = store
        self._static = {hash_api_key(key): user for key, user in static_keys.items()}

    async def principal_for_jwt(self, user_id: str, claims: Mapping[str, Any]) -> Principal:
        user = await self.store.get_user(user_id)
        if user is None:
            user = await self._create_jit(user_id, str(claims.get("name") or user_id))
        return principal_of(user)

    async def principal_for_api_key(self, key: str) -> Principal | None:
        digest = hash_api_key(key)
        user = await self.store.user_for_api_key(digest)
        if user is None and digest in self._static:
            user_id = self._static[digest]
            user = await self.store.get_user(user_id) or await self._create_jit(user_id, user_id)
        return None if user is None else principal_of(user)

    async def _create_jit(self, user_id: str, name: str) -> UserRecord:
        now = int(time.time())
        user = UserRecord(user_id, name, None, "user", None, DEFAULT_AVATAR, now, now, {})
        try:
            await self.store.create_user(user)
        except StoreConflict:
            # Two first requests of the same new user raced; the other one made it.
            existing = await self.store.get_user(user_id)
            if existing is None:
                raise
            return existing
        return user


async def add_user(
    store: Store, *, email: str, password: str, name: str | None = None, role: str | None = None
) -> UserRecord:
    """Create a user with a password. The very first user is an admin."""
    email = email.strip().lower()
    if "@" not in email:
        raise BadRequest("A valid email address is required")
    if not password:
        raise BadRequest("A password is required")
    if role is not None and role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    if role is None:
        role = "admin" if await store.count_users() == 0 else "user"
    now = int(time.time())
    user = UserRecord(
        str(uuid.uuid4()),
        name or email.split("@")[0],
        email,
        role,
        hash_password(password),
        DEFAULT_AVATAR,
        now,
        now,
        {},
    )
    try:
        await store.create_user(user)
    except StoreConflict:
        raise Conflict("A user with this email exists already") from None
    return user


async def sign_in(store: Store, email: str, password: str) -> UserRecord | None:
    user = await store.get_user_by_email(email.strip())
    if (
        user is None
        or user.password_hash is None
        or not check_password(password, user.password_hash)
    ):
        return None
    return user


async def create_api_key(store: Store, user_id: str, kind: str = "openwebui") -> str:
    key = new_api_key(kind)
    await store.add_api_key(hash_api_key(key), user_id, int(time.time()))
    return key
