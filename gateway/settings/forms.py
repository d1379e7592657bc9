"""What an operator may write for a setting, and what each value must be.

Values arrive as the operator wrote them — strings from the environment, YAML
scalars or lists from the config file, flags.  The *forms* below turn each into
the field's type before pydantic checks it, so the environment and the file
accept the same things (`"a;b"` or a YAML list for a list, an empty string for
"none").  The *checks* run on the typed value and raise `ValueError` with the
line the operator reads (`sources.py` puts the setting's name before it); a
value that holds a secret is never repeated in it.

`model.py` declares each setting with one of the types at the bottom.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from gateway.edge import redact

# A DNS name (RFC 1123 labels) for GATEWAY_HOST when it is not an address.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
# An origin as browsers send it: scheme://host[:port], no path.
_ORIGIN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$")
# What a base URL must not end in: the operator gave an endpoint, not the base.
_ENDPOINTS = ("/chat/completions", "/completions", "/models", "/embeddings")


# -- the forms an operator writes -------------------------------------------------------
def split(value: Any) -> Any:
    """A list written `a;b`, in the environment, or in YAML as Open WebUI's docs write it."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    return value


def pairs(value: Any) -> Any:
    """Pairs written `key=user_id;key2=user_id2`, into a mapping."""
    if not isinstance(value, str):
        return value
    parsed: dict[str, str] = {}
    for pair in (part.strip() for part in value.split(";")):
        if not pair:
            continue
        key, sep, user = pair.partition("=")
        if not sep or not key.strip() or not user.strip():
            # The pair holds a key: say where, never what.
            raise ValueError(f"pair {len(parsed) + 1} is not key=user_id")
        parsed[key.strip()] = user.strip()
    return parsed


def empty_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip() == "" else value


def upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


# -- what each value must be ---------------------------------------------------------
def host(value: str) -> str:
    value = value.strip()
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError("not an address or a host name")
    return value


def data_dir(path: Path) -> Path:
    if str(path).strip() in ("", "."):
        return Path(".")
    return path


def base_urls(urls: list[str]) -> list[str]:
    cleaned = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{_shown(url)} is not an http(s) URL")
        url = url.rstrip("/")
        endpoint = next((e for e in _ENDPOINTS if url.endswith(e)), None)
        if endpoint:
            raise ValueError(
                f"{_shown(url)} is an endpoint, not a base URL: "
                f"give {_shown(url.removesuffix(endpoint))}"
            )
        cleaned.append(url)
    return cleaned


def proxies(entries: list[str]) -> list[str]:
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or a CIDR") from None
    return entries


def origins(entries: list[str]) -> list[str]:
    found = []
    for entry in entries:
        entry = entry.rstrip("/")
        if entry != "*" and not _ORIGIN.match(entry):
            raise ValueError(
                f"{entry!r} is not an origin: write scheme://host[:port], "
                f"e.g. https://{entry.split('://')[-1].split('/')[0] or 'chat.example.com'}"
            )
        found.append(entry)
    return found


def base_path(path: str) -> str:
    path = path.strip()
    if path and (not path.startswith("/") or "?" in path or "#" in path):
        raise ValueError("not a path like /chat")
    return "" if path in ("", "/") else "/" + path.strip("/")


def database_url(url: str) -> str:
    url = url.strip()
    if not url:
        return url
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///"):
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///data/gateway.db")
        return url
    if url.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        return url
    scheme = url.partition("://")[0] if "://" in url else ""
    raise ValueError(f"the {scheme}:// scheme is not supported" if scheme else "not a database URL")


def redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("not a redis://, rediss:// or unix:// URL")
    return url


def _shown(url: str) -> str:
    return repr(redact.url(url))


# -- the types `model.py` declares settings with -----------------------------------------
T = TypeVar("T")

Host = Annotated[str, AfterValidator(host)]
DataDir = Annotated[Path, AfterValidator(data_dir)]
BasePath = Annotated[str, AfterValidator(base_path)]
DatabaseUrl = Annotated[str, AfterValidator(database_url)]
RedisUrl = Annotated[str, AfterValidator(redis_url)]
List = Annotated[list[str], BeforeValidator(split)]
BaseUrls = Annotated[list[str], BeforeValidator(split), AfterValidator(base_urls)]
Proxies = Annotated[list[str], BeforeValidator(split), AfterValidator(proxies)]
Origins = Annotated[list[str], BeforeValidator(split), AfterValidator(origins)]
Pairs = Annotated[dict[str, str], BeforeValidator(pairs)]
# A setting that may be unset: an empty string is None (`secret_key`, `jwt_expires_in_s`…).
OrNone = Annotated[T | None, BeforeValidator(empty_is_none)]
Upper = BeforeValidator(upper)
Lower = BeforeValidator(lower)
