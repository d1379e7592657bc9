"""Secrets the gateway makes: the JWT signing key, API keys, password hashes."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_KEY_FILE = ".webui_secret_key"  # Open WebUI's file name, so a data dir can be shared

# Open WebUI API keys are "sk-" + 32 hex; RAGFlow's are "ragflow-" + 43 url-safe chars.
OPENWEBUI_KEY_PREFIX = "sk-"
RAGFLOW_KEY_PREFIX = "ragflow-"


def load_or_create_secret(data_dir: Path) -> str:
    """The signing key kept in the data dir, generated on first start (mode 0600)."""
    path = data_dir / SECRET_KEY_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once must not each write their own key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key)
    return key


def new_api_key(kind: str = "openwebui") -> str:
    if kind == "ragflow":
        return RAGFLOW_KEY_PREFIX + secrets.token_urlsafe(32)[:43].ljust(43, "A")
    return OPENWEBUI_KEY_PREFIX + secrets.token_hex(16)


def looks_like_api_key(token: str) -> bool:
    return token.startswith((OPENWEBUI_KEY_PREFIX, RAGFLOW_KEY_PREFIX))


def hash_api_key(key: str) -> str:
    # API keys carry 128+ bits of entropy, so a fast hash is enough (no salt needed).
    return hashlib.sha256(key.encode()).hexdigest()


_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)
