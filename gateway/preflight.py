"""Checks on this machine that settings alone cannot make, run before anything
listens — by `gateway serve` and by `gateway check-config` alike — each
failure one `SettingsError` line that names the setting and the fix.

    prepare(loaded)       the data dir (created only if its parent exists), a
                          sqlite:/// file's directory, the JWT public key, the
                          event loop
    loop_factory(loaded)  the event loop `serve` runs on (uvloop's, or asyncio's)
    signing_key(loaded)   the key tokens are signed with, and where it came from
    bind_error(loaded, e) what an OSError from listening means, as one line
    probe_bind(loaded)    check-config: can the address be listened on?  (Held by a
                          running gateway: a note, not an error: the check before a
                          restart.)
    connect(loaded)       check-config --connect: the database, Redis (and whether it
                          refuses any kind of command the bus sends), each upstream

Nothing is ever created outside the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import os
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from gateway.edge import redact
from gateway.edge.auth import MIN_SECRET_BYTES
from gateway.edge.connections import SERVER_HEADER
from gateway.edge.secrets import SECRET_KEY_FILE, load_or_create_secret
from gateway.settings import Loaded, SettingsError
from gateway.store import sqlite_file
from gateway.store.errors import why_unavailable

CONNECT_TIMEOUT_S = 5.0


def _needs_data_dir(loaded: Loaded) -> bool:
    settings = loaded.settings
    return not settings.secret_key or not settings.database_url


def prepare(loaded: Loaded, *, create: bool = True) -> None:
    """The data dir ready (when anything lives there), the files settings name readable.
    `create=False` (check-config) makes nothing: a missing data dir must be creatable."""
    settings = loaded.settings
    if _needs_data_dir(loaded):
        _writable_dir(loaded, "data_dir", settings.data_dir, create=create, may_be_made=True)
    if settings.database_url.startswith("sqlite:///"):
        path = Path(settings.database_url.removeprefix("sqlite:///"))
        _writable_dir(loaded, "database_url", path.parent, create=False, may_be_made=False)
        if path.exists() and not path.is_file():
            raise loaded.error("database_url", f"{path} exists and is not a file")
    if settings.jwt_public_key_file is not None:
        _public_key(loaded, settings.jwt_public_key_file)
    if not settings.secret_key:
        _kept_key(loaded, missing_ok=True)
    db = sqlite_file(settings.database_url, settings.data_dir)
    if db is not None and db.is_file() and not os.access(db, os.W_OK):
        raise loaded.error(
            "database_url",
            f"{db.resolve()} is read-only for this user; the gateway writes every turn there",
        )
    loop_factory(loaded)


def short_key(loaded: Loaded) -> str | None:
    """The warning `serve` logs for a signing key shorter than HS256 wants (the
    configured one, or the one kept in the data dir), for check-config to say too."""
    key = loaded.settings.secret_key or _kept_key(loaded, missing_ok=True)
    if not key or len(key.encode()) >= MIN_SECRET_BYTES:
        return None
    return (
        f"WEBUI_SECRET_KEY has fewer than {MIN_SECRET_BYTES} bytes; use a longer one "
        "(openssl rand -hex 32)"
    )


def loop_factory(loaded: Loaded) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, unless asyncio's is asked for, or uvloop is missing and `auto`
    was (None: asyncio's)."""
    choice = loaded.settings.event_loop
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise loaded.error(
                "event_loop", "uvloop is not installed: pip install uvloop, or use auto"
            ) from None
        return None
    return uvloop.new_event_loop


def _writable_dir(
    loaded: Loaded, field: str, path: Path, *, create: bool, may_be_made: bool
) -> None:
    """`path` a directory we can write in.  A missing one is made only if
    `may_be_made` (the data dir: never its parents); with `create=False`
    (check-config) it is made to try, then removed again."""
    path = path if str(path) else Path(".")
    made = False
    if not path.exists():
        if not may_be_made:
            raise loaded.error(field, f"the directory {path} does not exist; create it first")
        parent = path.absolute().parent
        beneath = next((p for p in (parent, *parent.parents) if p.exists()), parent)
        if not beneath.is_dir():
            raise loaded.error(field, f"{beneath} is a file, not a directory; choose another")
        if not parent.is_dir():
            raise loaded.error(field, f"{parent} does not exist; create it or choose another")
        try:
            path.mkdir()
        except OSError as exc:
            raise loaded.error(
                field, f"cannot create the directory ({exc.strerror}); choose a writable one"
            ) from None
        made = True
    try:
        if not path.is_dir():
            raise loaded.error(field, f"{path} is not a directory")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise loaded.error(
            field, f"cannot write in {path} ({exc.strerror}); choose a writable directory"
        ) from None
    finally:
        if made and not create:
            path.rmdir()


def _public_key(loaded: Loaded, path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise loaded.error("jwt_public_key_file", f"cannot read it ({exc.strerror})") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise loaded.error(
            "jwt_public_key_file", "is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) and not (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        raise loaded.error(
            "jwt_public_key_file",
            "is neither an RSA key (RS256) nor an EC P-256 key (ES256), the two kinds of "
            "signature the gateway verifies",
        )


def _kept_key(loaded: Loaded, *, missing_ok: bool) -> str:
    """The signing key kept in the data dir ("" when there is none yet and
    `missing_ok`), or one line saying why it cannot be used."""
    path = key_file(loaded)
    fix = "or set WEBUI_SECRET_KEY"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise SettingsError(
            f"no signing key: {path} does not exist; run this where the gateway runs "
            f"(same DATA_DIR or --config), {fix}"
        ) from None
    except IsADirectoryError:
        raise loaded.error(
            "secret_key",
            f"unset, and the key file {path} is a directory; "
            f"remove it (a key is made at the next start) {fix}",
        ) from None
    except OSError as exc:
        raise loaded.error(
            "secret_key",
            f"unset, and the key file {path} cannot be read ({exc.strerror}); "
            f"let this user read it {fix}",
        ) from None
    except UnicodeDecodeError:
        raise loaded.error(
            "secret_key", f"unset, and the key file {path} is not UTF-8 text; {fix}"
        ) from None
    if not key:
        raise loaded.error(
            "secret_key",
            f"unset, and the key file {path} is empty (a start that stopped while writing "
            f"it?); remove it (a key is made at the next start: sign-ins made with another "
            f"key end) {fix}",
        )
    return key


def key_file(loaded: Loaded) -> Path:
    return (loaded.settings.data_dir / SECRET_KEY_FILE).resolve()


def signing_key(loaded: Loaded, *, create: bool) -> tuple[str, str]:
    """(key, where it came from).  `create=False` (the `token` command) refuses
    to make a key the server would not know."""
    settings = loaded.settings
    if settings.secret_key:
        return settings.secret_key, loaded.source("secret_key").label()
    path = key_file(loaded)
    if not create:
        return _kept_key(loaded, missing_ok=False), str(path)
    prepare(loaded)
    return load_or_create_secret(settings.data_dir), str(path)


def bind_error(loaded: Loaded, exc: OSError) -> SettingsError:
    """What failing to listen on host:port means, naming the setting to change."""
    settings = loaded.settings
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        return loaded.error("host", f"cannot be resolved ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        return loaded.error(
            "port", f"{where} is already in use; stop what listens there or choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return loaded.error(
            "host",
            "is not an address of this machine; use 0.0.0.0 (every interface) or "
            "127.0.0.1 (this machine only)",
        )
    if exc.errno == errno.EACCES:
        return loaded.error("port", f"listening on {where} is not permitted; choose a port ≥ 1024")
    return loaded.error("host", f"cannot listen on {where} ({exc.strerror or exc})")


def probe_bind(loaded: Loaded) -> str | None:
    """Listen on the address for a moment, as `serve` would.  An address a running
    gateway holds is not an error here (the configuration is checked before that
    gateway is restarted with it): a note saying so is returned instead."""
    settings = loaded.settings
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and _a_gateway_answers(settings.host, settings.port):
            return (
                f"{settings.host}:{settings.port} is in use by a running gateway; "
                "this configuration needs it free (stop that gateway, then start this one)"
            )
        raise bind_error(loaded, exc) from None
    return None


def _a_gateway_answers(host: str, port: int) -> bool:
    """Whether what listens on host:port answers HTTP as this gateway does (its
    `Server` header, on any answer, whatever its base path)."""
    near = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    at = f"[{near}]" if ":" in near else near
    try:
        # Not through a proxy the environment names (HTTP_PROXY): this host's own port.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://{at}:{port}/health", timeout=2) as response:
            server = response.headers.get("Server")
    except urllib.error.HTTPError as refused:
        with refused:
            server = refused.headers.get("Server")
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return bool(server == SERVER_HEADER)


# -- check-config --connect ----------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    field: str  # the setting that names the service
    ok: bool
    detail: str


async def connect(loaded: Loaded) -> list[Probe]:
    """Try each service the settings name; secrets masked in what is reported."""
    settings = loaded.settings
    probes = [_database(loaded)]
    if settings.websocket_manager == "redis":
        probes.append(_redis(loaded))
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S * 2)
    ) as session:
        keys = settings.openai_api_keys
        for index, url in enumerate(settings.openai_api_base_urls):
            key = keys[index] if index < len(keys) else ""
            probes.append(_upstream(session, url, key))
        return list(await asyncio.gather(*probes))


async def _database(loaded: Loaded) -> Probe:
    url = loaded.settings.database_url
    if (path := sqlite_file(url, loaded.settings.data_dir)) is not None:
        if not path.exists():
            return Probe(
                "database_url",
                True,
                f"SQLite {path.resolve()} (will be created at the first start)",
            )
        try:
            await asyncio.to_thread(_open_sqlite, path)
        except (OSError, sqlite3.Error) as exc:
            return Probe("database_url", False, f"{path.resolve()}: {why_unavailable(exc)}")
        return Probe("database_url", True, f"SQLite {path.resolve()} (exists, opened)")
    shown = redact.url(url)
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return Probe("database_url", False, f"{shown}: {why_unavailable(exc)}")
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return Probe("database_url", True, f"{shown} (PostgreSQL {version})")


def _open_sqlite(path: Path) -> None:
    """Open the file read-only and read its schema, as the first start would."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA schema_version").fetchone()


async def _redis(loaded: Loaded) -> Probe:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from gateway.bus import check

    url = loaded.settings.redis_url
    client = aioredis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    try:
        await client.ping()
        refused = await check.refused(
            client, loaded.settings.redis_key_prefix, timeout_s=CONNECT_TIMEOUT_S * 2
        )
    except (RedisError, OSError) as exc:
        return Probe("redis_url", False, f"{redact.url(url)}: {redact.text(str(exc))}")
    finally:
        await client.aclose()
    if refused:
        return Probe(
            "redis_url",
            False,
            f"{redact.url(url)}: the bus cannot work with this Redis: {'; '.join(refused)}"
            " (README, scale-out: what Redis and a user's ACL must allow)",
        )
    return Probe("redis_url", True, redact.url(url))


async def _upstream(session: aiohttp.ClientSession, url: str, key: str) -> Probe:
    shown = redact.url(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    hints = {
        401: "check its key (OPENAI_API_KEYS)",
        403: "check its key (OPENAI_API_KEYS)",
        404: "is /v1 missing from the URL?",
    }
    try:
        async with session.get(f"{url}/models", headers=headers) as response:
            if response.status != 200:
                hint = hints.get(response.status, "")
                return Probe(
                    "openai_api_base_urls",
                    False,
                    f"{shown}/models answered HTTP {response.status}"
                    + (f"; {hint}" if hint else ""),
                )
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        problem = redact.text(str(exc)) or type(exc).__name__
        return Probe("openai_api_base_urls", False, f"{shown}: {problem}")
    models = body.get("data") if isinstance(body, dict) else None
    if not isinstance(models, list):
        return Probe("openai_api_base_urls", False, f"{shown}/models is not an OpenAI model list")
    return Probe("openai_api_base_urls", True, f"{shown} ({len(models)} models)")
