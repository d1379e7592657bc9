"""Users and API keys: sign-up, sign-in, just-in-time users, removal, keys.

`Accounts` is what routes and the CLI call.

`StoreDirectory` is the `UserDirectory` the authenticator uses once the
store exists: a verified JWT for an unknown id creates that user (role
`user`, name from the `name` claim), API keys are looked up by their hash,
and keys from `GATEWAY_API_KEYS` still work (their users are created on
first use too).

A JWT's principal (id, name, role: only an admin's role change, `set_role`,
changes one, and is taken within that time) is remembered for `remember_s`, the
access recheck's period, so a
busy user's requests do not each wait for a store read (bench/RESULTS.md,
"Levers").  Removal is the one change that matters, and it is seen no later
than before: `forget` runs where the access guard learns of a removal (at
once on the replica that removed, at its next recheck on the others), which
is when that replica's open sockets of the user are closed too.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from gateway import jsonwire
from gateway.application.access import AccessGuard
from gateway.edge.auth import Principal
from gateway.edge.passwords import Passwords
from gateway.edge.secrets import hash_api_key, new_api_key
from gateway.edge.throttle import SignInThrottle
from gateway.errors import AuthError, BadRequest, Conflict, Forbidden, NotFound
from gateway.flavours.avatars import data_url_image
from gateway.store import ApiKeyRecord, DuplicateKey, Revocation, UserRecord, UserStore
from gateway.store.records import SHARED_BY

__all__ = ["Accounts", "StoreDirectory", "UserRecord", "add_user", "principal_for"]

DEFAULT_AVATAR = "/user.png"
ROLES = ("admin", "user", "pending")
# An address's longest (RFC 5321's path, less its brackets); a display name's.
MAX_EMAIL_CHARS = 254
MAX_NAME_CHARS = 256
# A picture (a data URL, as the web app makes one) and the prompt variables a user
# keeps (Settings › Account), at most.
MAX_PICTURE_CHARS = 1024 * 1024
MAX_VARIABLES, MAX_VARIABLE_CHARS = 100, 4096
# A user's stored web app settings, as JSON (the web app's are a few KB; each save
# merges its keys into them, so without a bound they grew a request at a time).
MAX_SETTINGS_BYTES = 256 * 1024
VARIABLES = "variables"  # their key in the user's stored settings
SIGNUP_DISABLED = "Sign-up is disabled; ask an admin to add you"


def principal_for(user: UserRecord) -> Principal:
    return Principal(user.id, user.name, user.role)


# A key's last use is written at most this often (one UPDATE per key per minute).
KEY_USE_WRITE_S = 60.0
# Keys whose last write is remembered (least recently used forgotten first).
MAX_REMEMBERED_KEYS = 10_000
# Users whose principal is remembered (oldest forgotten first; LIMITS.md).
MAX_REMEMBERED_USERS = 10_000


class StoreDirectory:
    def __init__(
        self, store: UserStore, static_keys: Mapping[str, str], remember_s: float = 0.0
    ) -> None:
        self.store = store
        self._static = {hash_api_key(key): user for key, user in static_keys.items()}
        self._used: OrderedDict[str, float] = OrderedDict()
        self._remember_s = remember_s
        # user id → (read at, principal); `_forgotten` counts removals seen, so a
        # read that overlapped one is not remembered.
        self._principals: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._forgotten = 0

    def forget(self, user_id: str) -> None:
        """`user_id` was removed: read it again (and refuse it) from now on."""
        self._forgotten += 1
        self._principals.pop(user_id, None)

    async def _note_use(self, digest: str) -> None:
        now = time.monotonic()
        last = self._used.pop(digest, None)
        if last is not None and now - last < KEY_USE_WRITE_S:
            self._used[digest] = last
            return
        self._used[digest] = now
        while len(self._used) > MAX_REMEMBERED_KEYS:
            self._used.popitem(last=False)
        await self.store.key_used(digest, int(time.time() * 1000))

    async def principal_for_jwt(self, user_id: str, claims: Mapping[str, Any]) -> Principal:
        if user_id.startswith(SHARED_BY):
            # Shared chats' snapshots are owned so (`chat/chats.py`): no one is.
            raise AuthError(f"Invalid token: user ids beginning {SHARED_BY!r} are reserved")
        now = time.monotonic()
        remembered = self._principals.get(user_id)
        if remembered is not None and now - remembered[0] < self._remember_s:
            return remembered[1]
        forgotten = self._forgotten
        user = await self.store.get_user(user_id)
        if user is None:
            user = await self._create_jit(user_id, str(claims.get("name") or user_id))
        principal = principal_for(user)
        if self._remember_s > 0 and forgotten == self._forgotten:
            self._principals.pop(user_id, None)
            self._principals[user_id] = (now, principal)
            while len(self._principals) > MAX_REMEMBERED_USERS:
                self._principals.popitem(last=False)
        return principal

    async def _refuse_removed(self, user_id: str) -> None:
        # A removed user's tokens may still be valid JWTs: they must not make
        # the user again (only ids never seen are created just in time).
        if await self.store.is_removed(user_id):
            raise AuthError("This account was removed", reason="removed")

    async def principal_for_api_key(self, key: str) -> Principal | None:
        digest = hash_api_key(key)
        user = await self.store.user_for_api_key(digest)
        if user is not None:
            await self._note_use(digest)
        if user is None and digest in self._static:
            user_id = self._static[digest]
            user = await self.store.get_user(user_id) or await self._create_jit(user_id, user_id)
        return None if user is None else principal_for(user)

    async def _create_jit(self, user_id: str, name: str) -> UserRecord:
        await self._refuse_removed(user_id)
        now = int(time.time())
        user = UserRecord(user_id, name, None, "user", None, DEFAULT_AVATAR, now, now, {})
        try:
            await self.store.create_user(user)
        except DuplicateKey:
            # Two first requests of the same new user raced; the other one made it.
            existing = await self.store.get_user(user_id)
            if existing is None:
                raise
            return existing
        return user


def _a_picture(url: Any) -> bool:
    """What a user may give as their picture: a raster data: URL (what the web app
    makes), the default, or nothing; never a page (SVG) or another site's URL."""
    if not isinstance(url, str) or len(url) > MAX_PICTURE_CHARS:
        return False
    return url in ("", DEFAULT_AVATAR) or data_url_image(url) is not None


async def set_role(store: UserStore, user_id: str, role: str) -> UserRecord:
    """The user's role changed (`pending` → `user` lets them in); NotFound, or
    BadRequest for a role that is none of ROLES."""
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    user = await store.get_user(user_id)
    if user is None:
        raise NotFound("User not found")
    user.role = role
    user.updated_at = int(time.time())
    await store.change_user(user, "role", "updated_at")
    return user


def check_new_user(
    passwords: Passwords, *, email: str, password: str, name: str | None, role: str | None
) -> str:
    """What `add_user` refuses, checked with no store (the command line checks it
    before it opens, or makes, one): BadRequest, or the e-mail as it is kept."""
    email = email.strip().lower()
    local, at, domain = email.rpartition("@")
    if not (local and at and domain) or len(email) > MAX_EMAIL_CHARS:
        raise BadRequest(
            f"A valid email address is required (at most {MAX_EMAIL_CHARS} characters)"
        )
    if name is not None and len(name) > MAX_NAME_CHARS:
        # (It goes into every token the user is issued: a header past 8 KB is refused.)
        raise BadRequest(f"A name has at most {MAX_NAME_CHARS} characters")
    if role is not None and role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    passwords.check_new(password)
    return email


async def add_user(
    store: UserStore,
    passwords: Passwords,
    *,
    email: str,
    password: str,
    name: str | None = None,
    role: str | None = None,
    only_first: bool = False,
) -> UserRecord:
    """Create a user with a password. Without a role, the very first user is an
    admin and the others users; with `only_first` (sign-up disabled), only the
    first may be made at all."""
    email = check_new_user(passwords, email=email, password=password, name=name, role=role)
    now = int(time.time())
    user = UserRecord(
        str(uuid.uuid4()),
        name or email.split("@")[0],
        email,
        role or "user",
        await passwords.hash(password),
        DEFAULT_AVATAR,
        now,
        now,
        {},
    )
    try:
        if role is not None:
            await store.create_user(user)
            return user
        # Who is first is decided by the store, atomically (concurrent sign-ups).
        made = await store.create_user_first_admin(user, only_first=only_first)
    except DuplicateKey:
        raise Conflict("A user with this email exists already") from None
    if made is None:
        raise Forbidden(SIGNUP_DISABLED)
    return made


async def sign_in(
    store: UserStore, passwords: Passwords, email: str, password: str
) -> UserRecord | None:
    user = await store.get_user_by_email(email.strip())
    # Unknown e-mails are checked too (against a dummy): the same time either way.
    stored = None if user is None else user.password_hash
    if not await passwords.verify(password, stored) or user is None:
        return None
    return user


def key_hint(key: str) -> str:
    """What a listing shows of a key: enough to recognise it, far too little to use."""
    return f"{key[:6]}…{key[-4:]}"


async def create_api_key(store: UserStore, user_id: str, kind: str = "openwebui") -> str:
    """A new key, shown this once (only its hash and hint are stored).  An Open WebUI
    user has one key, as in Open WebUI: a new one revokes the one before (RAGFlow's
    tokens are many)."""
    key = new_api_key(kind)
    await store.add_api_key(hash_api_key(key), user_id, int(time.time()), kind, key_hint(key))
    return key


async def remove_user(store: UserStore, user_id: str) -> list[Revocation]:
    """The user and everything of theirs gone, their id refused from now on; the
    revocations made (none when there was no such user)."""
    return await store.remove_user(user_id, int(time.time() * 1000))


async def revoke_api_keys(store: UserStore, user_id: str, kind: str) -> list[Revocation]:
    return await store.revoke_api_keys(user_id, kind, int(time.time() * 1000))


class Accounts:
    """Users and keys, for routes and the CLI alike: sign-in (throttled, hashed
    beside the event loop), sign-up, adding and removing users, API keys.  A
    removal or revocation closes the connections that hung on it at once here
    (`AccessGuard`), and on other replicas at their next recheck."""

    def __init__(
        self,
        store: UserStore,
        passwords: Passwords,
        throttle: SignInThrottle,
        access: AccessGuard,
        *,
        enable_signup: bool,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._throttle = throttle
        self._access = access
        self._enable_signup = enable_signup

    async def sign_in(self, email: str, password: str, address: str | None) -> UserRecord:
        # Refused (429) before any hashing when the account or the address failed too often.
        attempt = self._throttle.admit(email, address)
        try:
            user = await sign_in(self._store, self._passwords, email, password)
        except BaseException:
            attempt.abandoned()
            raise
        if user is None:
            attempt.failed()
            # Open WebUI answers 400 here, not 401.
            raise BadRequest("The email or password provided is incorrect.")
        attempt.succeeded()
        return user

    async def sign_up(self, email: str, password: str, name: str | None) -> UserRecord:
        only_first = not self._enable_signup
        # Refused before hashing when it surely would be; the store decides for real.
        if only_first and await self._store.count_users() > 0:
            raise Forbidden(SIGNUP_DISABLED)
        return await add_user(
            self._store,
            self._passwords,
            email=email,
            password=password,
            name=name,
            only_first=only_first,
        )

    async def add(
        self, admin: Principal, email: str, password: str, name: str | None, role: str
    ) -> UserRecord:
        if not admin.is_admin:
            raise Forbidden("Only admins can add users")
        return await add_user(
            self._store, self._passwords, email=email, password=password, name=name, role=role
        )

    async def user(self, principal: Principal) -> UserRecord:
        user = await self._store.get_user(principal.user_id)
        if user is None:
            raise NotFound("User not found")
        return user

    async def profile(self, user_id: str) -> UserRecord | None:
        """Any user's name and picture (signed-in users see each other's, as in
        Open WebUI); None for an unknown id."""
        return await self._store.get_user(user_id)

    async def save_settings(self, principal: Principal, settings: dict[str, Any]) -> None:
        """The web app's settings, merged key by key into the stored ones (it sends
        one part at a time: `{ui}`, `{keybindings}`); the prompt variables are
        `save_variables`'."""
        user = await self.user(principal)
        given = {key: value for key, value in settings.items() if key != VARIABLES}
        merged = {**user.settings, **given}
        if len(jsonwire.body(merged)) > MAX_SETTINGS_BYTES:
            raise BadRequest(
                f"Settings are at most {MAX_SETTINGS_BYTES // 1024} KiB of JSON, "
                "all of them together"
            )
        user.settings = merged
        await self._store.change_user(user, "settings")

    async def variables(self, principal: Principal) -> dict[str, str]:
        """The user's own prompt variables (the web app's Settings › Account)."""
        found = (await self.user(principal)).settings.get(VARIABLES)
        return dict(found) if isinstance(found, dict) else {}

    async def save_variables(self, principal: Principal, variables: Any) -> dict[str, str]:
        if not (
            isinstance(variables, dict)
            and len(variables) <= MAX_VARIABLES
            and all(
                isinstance(v, str) and len(k) <= MAX_NAME_CHARS and len(v) <= MAX_VARIABLE_CHARS
                for k, v in variables.items()
            )
        ):
            raise BadRequest(
                f"'variables' must be an object of at most {MAX_VARIABLES} names (of at most "
                f"{MAX_NAME_CHARS} characters) to strings of at most {MAX_VARIABLE_CHARS}"
            )
        user = await self.user(principal)
        user.settings = {**user.settings, VARIABLES: dict(variables)}
        await self._store.change_user(user, "settings")
        return dict(variables)

    async def update_profile(
        self, principal: Principal, name: Any, profile_image_url: Any
    ) -> UserRecord:
        """The user's own name and picture (the web app's Settings › Account)."""
        user = await self.user(principal)
        if name is not None:
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
                raise BadRequest(f"'name' must be a string of 1 to {MAX_NAME_CHARS} characters")
            user.name = name.strip()
        if profile_image_url is not None:
            if not _a_picture(profile_image_url):
                raise BadRequest(
                    "'profile_image_url' must be a PNG, JPEG, GIF or WebP picture as a base64 "
                    f"data: URL of at most {MAX_PICTURE_CHARS:,} characters, or empty"
                )
            user.profile_image_url = profile_image_url or DEFAULT_AVATAR
        user.updated_at = int(time.time())
        await self._store.change_user(user, "name", "profile_image_url", "updated_at")
        return user

    async def remove(self, admin: Principal, user_id: str) -> None:
        if not admin.is_admin:
            raise Forbidden("Only admins can remove users")
        if user_id == admin.user_id:
            # Open WebUI refuses this too: an admin would lock themselves out.
            raise Forbidden("You cannot remove yourself")
        await self._not_the_primary_admin(user_id)
        revocations = await remove_user(self._store, user_id)
        if not revocations:
            raise NotFound("User not found")
        for revocation in revocations:
            await self._access.revoked(revocation)

    async def set_role(self, admin: Principal, user_id: str, role: str) -> UserRecord:
        """An admin lets a `pending` user in, or changes anyone's role but their own."""
        if not admin.is_admin:
            raise Forbidden("Only admins change roles")
        if user_id == admin.user_id:
            raise Forbidden("You cannot change your own role")
        await self._not_the_primary_admin(user_id, role)
        # Taken by every replica within the access recheck's period (principals are
        # remembered that long: `StoreDirectory`).
        return await set_role(self._store, user_id, role)

    async def _not_the_primary_admin(self, user_id: str, role: str | None = None) -> None:
        """As Open WebUI: no admin changes or removes the primary admin (here the admin
        whose account is oldest: accounts are dated in seconds, and of two made in
        the same second the one with the smaller id), and no admin changes their
        own role: one admin cannot lock out the deployment's first.  Nor is an
        account older than the primary admin's made an admin (`role`): it would
        become the primary admin, and the one before it could then be removed.
        The operator can, from the command line (`gateway users role`, `remove`)."""
        primary = await self._store.first_admin()
        if primary is None:
            return
        if primary.id == user_id:
            raise Forbidden(
                "The primary admin (the oldest admin account) cannot be changed or removed "
                "by another admin; an operator can, with `gateway users role` or "
                "`gateway users remove`"
            )
        if role == "admin":
            user = await self._store.get_user(user_id)
            if user is not None and (user.created_at, user.id) < (primary.created_at, primary.id):
                raise Forbidden(
                    "This account is older than the primary admin's: made an admin, it would "
                    "become the primary admin. An operator can, with `gateway users role`"
                )

    async def new_key(self, principal: Principal, kind: str = "openwebui") -> str:
        """A new key; for Open WebUI the one before is revoked (one key per user)."""
        if kind == "openwebui":
            await self.revoke_keys(principal, kind)
        return await create_api_key(self._store, principal.user_id, kind)

    async def keys(self, principal: Principal) -> list[ApiKeyRecord]:
        return await self._store.list_api_keys(principal.user_id)

    async def all_keys(self, admin: Principal) -> list[ApiKeyRecord]:
        if not admin.is_admin:
            raise Forbidden("Only admins list everyone's API keys")
        return await self._store.list_api_keys(None)

    async def revoke_key(self, principal: Principal, key_id: str) -> None:
        """One key by its id: the caller's own, or anyone's for an admin but the
        primary admin's (`_not_the_primary_admin`: a key-only admin is locked out
        without their key)."""
        owner = None if principal.is_admin else principal.user_id
        if owner is None:
            primary = await self._store.first_admin()
            if primary is not None and primary.id != principal.user_id:
                theirs = await self._store.list_api_keys(primary.id)
                if any(key.id == key_id for key in theirs):
                    raise Forbidden("The primary admin's keys are revoked by them, or an operator")
        revocations = await self._store.revoke_api_key(key_id, int(time.time() * 1000), owner)
        if not revocations:
            raise NotFound("API key not found")
        for revocation in revocations:
            await self._access.revoked(revocation)

    async def revoke_keys(self, principal: Principal, kind: str) -> None:
        for revocation in await revoke_api_keys(self._store, principal.user_id, kind):
            await self._access.revoked(revocation)
