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
from urllib.parse import SplitResult, parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator

from gateway.edge import redact
from gateway.edge.secrets import looks_like_api_key

# A DNS name (RFC 1123 labels) for GATEWAY_HOST when it is not an address.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
# An origin as browsers send it: scheme://host[:port], no path.
_ORIGIN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$")
# What a base URL must not end in: the operator gave an endpoint, not the base.
_ENDPOINTS = ("/chat/completions", "/completions", "/models", "/embeddings")
# A segment of GATEWAY_BASE_PATH: what a URL path carries without escaping.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")
# libpq's (and asyncpg's) sslmode values.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


# -- the forms an operator writes -------------------------------------------------------
def split(value: Any) -> Any:
    """A list written `a;b`, in the environment, or in YAML as Open WebUI's docs write it."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    return value


def positions(value: Any) -> Any:
    """A list whose places matter, written `a;b`: an empty part keeps its place
    (`;sk-b` is no key for the first URL, sk-b for the second); empty parts at the
    end say nothing and are dropped."""
    if not isinstance(value, str):
        return value
    parts = [part.strip() for part in value.split(";")]
    while parts and not parts[-1]:
        parts.pop()
    return parts


def pairs(value: Any) -> Any:
    """Pairs written `key=user_id;key2=user_id2`, into a mapping."""
    if not isinstance(value, str):
        return value
    parsed: dict[str, str] = {}
    for number, pair in enumerate((p.strip() for p in value.split(";") if p.strip()), 1):
        key, sep, user = pair.partition("=")
        key, user = key.strip(), user.strip()
        # Each pair holds a key: say which pair, never what it holds.
        if not sep or not key or not user:
            raise ValueError(f"pair {number} is not key=user_id")
        if not looks_like_api_key(key):  # only such a bearer token is looked up as a key
            raise ValueError(
                f"the key of pair {number} does not start with sk- or ragflow-, "
                "so no request could use it (clients send it as a bearer token)"
            )
        if key in parsed:
            raise ValueError(f"the key of pair {number} is given twice; each key names one user")
        parsed[key] = user
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


def path(value: Path) -> Path:
    """A path as written, `~` its user's home (an empty one is `.`, as Open WebUI's
    empty DATA_DIR is the working directory)."""
    return value.expanduser()


def base_urls(urls: list[str]) -> list[str]:
    cleaned = []
    for url in urls:
        _written_out(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{_shown(url)} is not an http(s) URL")
        _port(parts)
        if parts.query or parts.fragment:
            raise ValueError(
                f"{_shown(url)} has a query or fragment, which no request would carry: "
                "give the bare base URL (a key goes in OPENAI_API_KEYS)"
            )
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
    segments = [segment for segment in path.split("/") if segment]
    if path and (
        not path.startswith("/")
        or not all(_SEGMENT.match(s) and s not in (".", "..") for s in segments)
    ):
        raise ValueError(
            "not a path like /chat (segments of letters, digits, '-', '_', '.' and '~')"
        )
    return "/" + "/".join(segments) if segments else ""


def database_url(url: str) -> str:
    url = url.strip()
    if not url:
        return url
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///"):
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///data/gateway.db")
        return url
    if url.startswith(("postgresql://", "postgres://")):
        _written_out(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        _port(parts)
        query = parse_qsl(parts.query, keep_blank_values=True)
        modes = [value.replace("_", "-") for key, value in query if key == "sslmode"]
        if any(mode not in _SSL_MODES for mode in modes):  # (asyncpg reads verify_full too)
            raise ValueError(f"sslmode must be one of {', '.join(_SSL_MODES)}")
        return url
    scheme = url.partition("://")[0] if "://" in url else ""
    raise ValueError(f"the {scheme}:// scheme is not supported" if scheme else "not a database URL")


def redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("not a redis://, rediss:// or unix:// URL")
    _written_out(url)
    if not url.startswith("unix://"):
        _port(urlsplit(url))
    return url


def text(value: str) -> str:
    """A secret or token the gateway sends or signs with: it must be UTF-8 text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds bytes that are not UTF-8 text") from None
    return value


def _written_out(url: str) -> None:
    """A URL's user info must be percent-encoded: a second '@' is read differently by
    each client, and a raw '/', '?' or '#' ends the host part early (`user:pa`, a
    port that is no number, with an '@' further on), the password then taken for
    the host or the path.  An '@' in the path or query alone is no user info."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    cut_short = (
        "@" not in authority
        and "@" in rest
        and ":" in authority
        and not authority.rpartition(":")[2].isdigit()
    )
    if authority.count("@") > 1 or cut_short:
        raise ValueError(
            "the user or password holds '@', '/', '?' or '#': percent-encode them "
            "(%40, %2F, %3F, %23)"
        )


def _port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number 0-65535
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None


def _shown(url: str) -> str:
    return repr(redact.url(url))


# -- the types `model.py` declares settings with -----------------------------------------
T = TypeVar("T")

Host = Annotated[str, AfterValidator(host)]
DataDir = Annotated[Path, AfterValidator(path)]
FilePath = Annotated[Path, AfterValidator(path)]
BasePath = Annotated[str, AfterValidator(base_path)]
DatabaseUrl = Annotated[str, AfterValidator(database_url)]
RedisUrl = Annotated[str, AfterValidator(redis_url)]
List = Annotated[list[str], BeforeValidator(split)]
Keys = Annotated[list[str], BeforeValidator(positions)]
Text = Annotated[str, AfterValidator(text)]
BaseUrls = Annotated[list[str], BeforeValidator(split), AfterValidator(base_urls)]
Proxies = Annotated[list[str], BeforeValidator(split), AfterValidator(proxies)]
Origins = Annotated[list[str], BeforeValidator(split), AfterValidator(origins)]
Pairs = Annotated[dict[str, str], BeforeValidator(pairs)]
# A setting that may be unset: an empty string is None (`secret_key`, `jwt_expires_in_s`…).
OrNone = Annotated[T | None, BeforeValidator(empty_is_none)]
Upper = BeforeValidator(upper)
Lower = BeforeValidator(lower)
