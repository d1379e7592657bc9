"""Who is asking: one `Authenticator` for HTTP, SSE, WebSocket and Socket.IO.

Tokens are looked for in the order of docs/PROTOCOLS.md §0: `Authorization:
Bearer`, `x-api-key`, the `token` cookie, the `token` (or `authorization`)
query parameter (socket handshakes only), then a Socket.IO `auth` payload.  A token is either a JWT
(HS256 with the secret key, or RS256/ES256 with a configured public key) or
an API key (`sk-…`, `ragflow-…`).  A valid JWT for a user never seen before
creates that user: the gateway fronts other identity providers.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from gateway.edge import access, metrics
from gateway.edge.secrets import hash_api_key, looks_like_api_key
from gateway.errors import AuthError

log = logging.getLogger(__name__)

# RFC 7518 §3.2: an HS256 key should have at least 256 bits.
MIN_SECRET_BYTES = 32
# The role of a user who signed up and waits for an admin to let them in.
PENDING = "pending"
# JWTs remembered once verified (LIMITS.md), so a client that sends the same
# token with every request (each REST call, each SSE reply) pays PyJWT's decode
# once, not each time: about 80 µs of the loop a request for HS256 on the bench
# machine, more for RS256/ES256 (bench/RESULTS.md, "Levers").  The oldest go
# first; a remembered token is refused all the same once its `exp` has passed.
MAX_VERIFIED_TOKENS = 4096
# Longer tokens are verified at each use (an identity provider's usual JWT is
# well under 2 KB): what the remembered ones hold stays small.
MAX_VERIFIED_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    role: str = "user"
    # What the connection's access hangs on (`gateway/access.py`): the hash of
    # the API key it used, and when its JWT expires (epoch seconds).
    key_hash: str | None = None
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UserDirectory(Protocol):
    """Where principals come from: the store, or static settings before it exists."""

    async def principal_for_jwt(self, user_id: str, claims: Mapping[str, Any]) -> Principal:
        """The user named by a verified JWT, created on first sight."""
        ...

    async def principal_for_api_key(self, key: str) -> Principal | None: ...


class StaticDirectory:
    """Users from verified tokens and API keys from settings (`GATEWAY_API_KEYS`)."""

    def __init__(self, api_keys: Mapping[str, str]) -> None:
        self._api_keys = dict(api_keys)

    async def principal_for_jwt(self, user_id: str, claims: Mapping[str, Any]) -> Principal:
        return Principal(user_id, str(claims.get("name") or user_id), "user")

    async def principal_for_api_key(self, key: str) -> Principal | None:
        user_id = self._api_keys.get(key)
        return None if user_id is None else Principal(user_id, user_id, "user")


def find_token(
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    auth_payload: Mapping[str, Any] | None = None,
) -> str | None:
    """The first token offered, in the documented order; None when there is none.

    `query` is passed only by WebSocket and Socket.IO handshakes, where a
    browser cannot set a header: a token in a URL ends up in proxy logs and
    browser history, so plain HTTP requests must send it in a header or the
    cookie.

    A present but malformed `Authorization` header is an error, not "no token":
    silently falling back to a cookie would hide a client bug.  A bare token
    (`Authorization: <jwt>`, as RAGFlow's docs show for session tokens) is
    accepted like `Bearer <jwt>`.
    """
    header = headers.get("Authorization")
    if header is not None:
        words = header.split()
        if len(words) == 1:
            return words[0]
        if len(words) != 2 or words[0].lower() != "bearer":
            metrics.AUTH_FAILURES.labels("malformed").inc()
            raise AuthError(
                "Malformed Authorization header: expected 'Bearer <token>'", reason="malformed"
            )
        return words[1]
    query = query or {}
    for candidate in (
        headers.get("x-api-key"),
        cookies.get("token"),
        query.get("token"),
        query.get("authorization"),
    ):
        if candidate:
            return candidate.removeprefix("Bearer ").strip()
    if auth_payload:
        token = auth_payload.get("token")
        if isinstance(token, str) and token:
            return token.removeprefix("Bearer ").strip()
    return None


class Authenticator:
    def __init__(
        self,
        secret_key: str,
        directory: UserDirectory,
        public_key_pem: str | None = None,
    ) -> None:
        self._secret = secret_key
        self._public_key = public_key_pem
        self.directory = directory
        # A verified token's text → its claims and the second it expires (None: never).
        self._verified: dict[str, tuple[Mapping[str, Any], int | None]] = {}
        if len(secret_key.encode()) < MIN_SECRET_BYTES:
            # Open WebUI's historical default is short; accept it, but say so once.
            log.warning(
                "WEBUI_SECRET_KEY has fewer than %d bytes; use a longer one", MIN_SECRET_BYTES
            )

    def issue(self, user_id: str, ttl_s: int | None = None, **claims: Any) -> str:
        """A HS256 JWT in Open WebUI's shape (`{"id": …}`), valid on every transport."""
        payload: dict[str, Any] = {"id": user_id, **claims}
        if ttl_s is not None:
            payload["exp"] = int(time.time()) + ttl_s
        with _short_key_allowed():
            return jwt.encode(payload, self._secret, algorithm="HS256")

    async def authenticate(self, token: str | None, *, pending_too: bool = False) -> Principal:
        """Who `token` (a JWT or an API key) is; `AuthError` (counted by its reason).
        A user whose role is `pending` (signed up, not yet let in by an admin) is
        refused as Open WebUI refuses one, but where `pending_too` (their own
        session and the web app's config, which show them the waiting page)."""
        try:
            principal = await self._authenticate(token)
            if principal.role == PENDING and not pending_too:
                raise AuthError(
                    "Your account is pending: an administrator must activate it first",
                    reason="pending",
                )
        except AuthError as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            raise
        access.noted_user(principal.user_id)
        return principal

    async def _authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "Not authenticated: send 'Authorization: Bearer <token>'", reason="missing"
            )
        if not token.isascii():
            # JWTs and API keys are ASCII; bytes that are not UTF-8 arrive escaped.
            raise AuthError("Invalid token: not ASCII", reason="malformed")
        if looks_like_api_key(token):
            principal = await self.directory.principal_for_api_key(token)
            if principal is None:
                raise AuthError("Invalid API key", reason="invalid_api_key")
            return replace(principal, key_hash=hash_api_key(token))
        claims = self.verify_jwt(token)
        user_id = claims.get("id") or claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise AuthError("Invalid token: no 'id' or 'sub' claim", reason="no_subject")
        principal = await self.directory.principal_for_jwt(user_id, claims)
        expires = _expiry(claims.get("exp"))
        return replace(principal, expires_at=expires) if expires is not None else principal

    @property
    def remembered(self) -> int:
        """How many verified tokens are remembered now (at most `MAX_VERIFIED_TOKENS`)."""
        return len(self._verified)

    def verify_jwt(self, token: str) -> Mapping[str, Any]:
        """The claims of a JWT signed with the gateway's key, unexpired; else `AuthError`.
        A token verified before is not decoded again: its expiry is checked as PyJWT
        checks it (expired from the second `exp` names)."""
        found = self._verified.get(token)
        if found is not None:
            if found[1] is None or time.time() < found[1]:
                return found[0]
            del self._verified[token]
            raise AuthError("Token expired", reason="expired")
        claims = self._decode(token)
        if len(token) <= MAX_VERIFIED_TOKEN_CHARS:
            if len(self._verified) >= MAX_VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]
            # PyJWT has checked that `exp`, if any, reads as an integer.
            expires = claims.get("exp")
            self._verified[token] = (claims, None if expires is None else int(expires))
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("Invalid token: not a JWT", reason="not_jwt") from None
        alg = header.get("alg")
        key: str
        if alg == "HS256":
            key = self._secret
        elif alg in ("RS256", "ES256") and self._public_key is not None:
            key = self._public_key
        else:
            # Covers "none" and algorithm-confusion attempts alike.
            raise AuthError(f"Invalid token: algorithm {alg!r} is not accepted", reason="algorithm")
        try:
            with _short_key_allowed():
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[alg], options={"require": [], "verify_aud": False}
                )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired", reason="expired") from None
        except jwt.PyJWTError:
            raise AuthError("Invalid token: bad signature or claims", reason="signature") from None
        return claims


def _expiry(exp: Any) -> float | None:
    """A verified token's `exp` as PyJWT reads it (its integer part: PyJWT has checked
    that it reads as one); None when there is none, or it is past what a float holds
    (a signed `exp` of 10**400 is never, not a 500)."""
    if exp is None:
        return None
    try:
        return float(int(exp))
    except OverflowError:
        return None


@contextlib.contextmanager
def _short_key_allowed() -> Iterator[None]:
    """Silence PyJWT's per-call short-key warning; the constructor logs it once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield
