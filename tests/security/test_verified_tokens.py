"""A JWT verified once is remembered (`edge/auth.py`, `MAX_VERIFIED_TOKENS`): the
same token again is not decoded again, yet it is refused the moment its `exp`
passes, exactly as PyJWT would refuse it; nothing that failed is remembered; the
memory is bounded in entries and in the size of what it keeps."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from gateway.edge import auth
from gateway.edge.auth import Authenticator, StaticDirectory
from gateway.errors import AuthError

SECRET = "s" * 40


def authenticator() -> Authenticator:
    return Authenticator(SECRET, StaticDirectory({}))


def token(user: str = "ann", secret: str = SECRET, **claims: object) -> str:
    return jwt.encode({"id": user, **claims}, secret, algorithm="HS256")


def refused(authority: Authenticator, text: str) -> str:
    with pytest.raises(AuthError) as caught:
        authority.verify_jwt(text)
    return caught.value.reason


def test_a_token_used_again_is_remembered_with_the_same_claims() -> None:
    authority = authenticator()
    text = token(name="Ann", exp=int(time.time()) + 3600)
    first = authority.verify_jwt(text)
    assert authority.remembered == 1
    again = authority.verify_jwt(text)
    assert again == first == jwt.decode(text, SECRET, algorithms=["HS256"])
    assert authority.remembered == 1


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    authority = authenticator()
    expires = int(time.time()) + 2
    text = token(exp=expires)
    assert authority.verify_jwt(text)["id"] == "ann"
    assert authority.remembered == 1
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    # PyJWT's own verdict on the token now, and the remembered one's: the same.
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(text, SECRET, algorithms=["HS256"])
    assert refused(authority, text) == "expired"
    assert authority.remembered == 0  # forgotten
    assert refused(authority, text) == "expired"  # and refused by PyJWT too


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def test_nothing_that_failed_is_remembered() -> None:
    authority = authenticator()
    good = token(exp=int(time.time()) + 3600)
    authority.verify_jwt(good)
    head, _, signature = good.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps({"id": "root"}).encode()).rstrip(b"=")
    bad = {
        "signature": token(secret="not-the-secret-" + "x" * 32),
        "expired": token(exp=int(time.time()) - 10),
        "algorithm": _unsigned({"alg": "none", "typ": "JWT"}, {"id": "ann"}),
        "not_jwt": "not.a.jwt",
    }
    for reason, text in bad.items():
        for _ in range(2):  # refused again, on the same grounds
            assert refused(authority, text) == reason
    # A remembered token's signature on another payload is still checked.
    assert refused(authority, f"{head}.{forged_body.decode()}.{signature}") == "signature"
    assert authority.remembered == 1


def test_the_memory_is_bounded_and_the_oldest_goes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "MAX_VERIFIED_TOKENS", 50)
    authority = authenticator()
    texts = [token(f"user{index}") for index in range(60)]
    for text in texts:
        authority.verify_jwt(text)
    assert authority.remembered == 50
    held = authority._verified
    assert [text in held for text in texts] == [False] * 10 + [True] * 50
    # The oldest were let go, and are verified anew when they come back.
    assert authority.verify_jwt(texts[0])["id"] == "user0"
    assert texts[0] in held and texts[10] not in held
    assert authority.remembered == 50


def test_a_long_token_is_verified_each_time_not_remembered() -> None:
    authority = authenticator()
    text = token(padding="p" * auth.MAX_VERIFIED_TOKEN_CHARS)
    assert len(text) > auth.MAX_VERIFIED_TOKEN_CHARS
    assert authority.verify_jwt(text)["id"] == "ann"
    assert authority.verify_jwt(text)["id"] == "ann"
    assert authority.remembered == 0


async def test_an_expiry_too_far_for_a_float_is_never_not_a_failure() -> None:
    authority = authenticator()
    principal = await authority.authenticate(token(exp=10**400))
    assert principal.user_id == "ann" and principal.expires_at is None
    # A fractional exp counts from its integer part, as PyJWT reads it.
    assert (await authority.authenticate(token(exp=4_000_000_000.9))).expires_at == 4e9
