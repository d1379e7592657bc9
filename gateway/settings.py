"""Settings: read once, from a YAML file and the environment (environment wins).

This is the only module that reads `os.environ`.  Open WebUI's variable
names are used where they exist so an operator can reuse an existing `.env`;
the rest are `GATEWAY_<FIELD>` in upper case.  Every field carries its unit
in its name, and `None` disables a limit.  `config/gateway.example.yaml`
lists each one with its default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class SettingsError(Exception):
    """A setting has a value we cannot use; the message is one line for the operator."""


def _list(description: str) -> Any:
    return Field(default_factory=list, description=description)


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="an interface address, e.g. 0.0.0.0")
    port: int = Field(8080, ge=0, le=65535, description="a TCP port, 0-65535")
    data_dir: Path = Field(Path("data"), description="a directory path")
    secret_key: str | None = Field(
        None, description="any non-empty string; generated and kept in DATA_DIR when unset"
    )
    jwt_public_key_file: Path | None = Field(
        None, description="a PEM file with an RS256/ES256 public key"
    )
    jwt_expires_in_s: int | None = Field(
        7 * 24 * 3600, ge=1, description="seconds a sign-in token lives; empty for no expiry"
    )
    openai_api_base_urls: list[str] = _list("';'-separated http(s) URLs ending in /v1")
    openai_api_keys: list[str] = _list("';'-separated keys, one per base URL")
    demo_model: bool = Field(True, description="true or false")
    default_model: str = Field(
        "",
        description="the model a client that names none gets (Nadoo, RAGFlow); "
        "empty for the first model the upstreams list",
    )
    demo_token_delay_s: float = Field(0.02, ge=0, description="seconds between demo tokens")
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="';'-separated addresses or CIDRs whose X-Forwarded-*/Forwarded headers "
        "are believed",
    )
    base_path: str = Field(
        "", description="a path the whole gateway lives under, e.g. /chat (empty: the root)"
    )
    cors_allow_origin: list[str] = Field(
        default_factory=lambda: ["*"], description="';'-separated origins, or *"
    )
    database_url: str = Field(
        "", description="empty (SQLite in DATA_DIR), sqlite:///… or postgresql://…"
    )
    websocket_manager: Literal["", "local", "redis"] = Field(
        "", description="empty, local or redis"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="a redis:// URL")
    redis_key_prefix: str = Field(
        "gw:", description="prefix of every Redis key and channel (several deployments, one Redis)"
    )
    bus_max_message_bytes: int = Field(
        256 * 1024,
        ge=4096,
        description="bytes of one event between replicas; bigger deltas are split, ≥ 4096",
    )
    enable_websocket_support: bool = Field(True, description="true or false")
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="';'-separated key=user_id pairs"
    )
    upstream_connect_timeout_s: float = Field(10.0, gt=0, description="seconds")
    upstream_read_timeout_s: float | None = Field(
        300.0, gt=0, description="seconds of upstream silence before giving up; empty for none"
    )
    upstream_max_connections: int = Field(1000, ge=1, description="an integer ≥ 1")
    upstream_models_ttl_s: float = Field(60.0, ge=0, description="seconds to cache model lists")
    sse_keepalive_s: float = Field(15.0, gt=0, description="seconds between SSE comment lines")
    enable_signup: bool = Field(
        True, description="true or false (the first user can always sign up)"
    )
    checkpoint_interval_s: float = Field(
        1.0, gt=0, description="seconds between draft checkpoints of a streaming reply"
    )
    ragflow_sse_answer_mode: Literal["cumulative", "delta"] = Field(
        "cumulative",
        description="RAGFlow HTTP answers: cumulative (RAGFlow ≤ 0.23, the SDK's examples) "
        "or delta (≥ 0.24)",
    )
    ragflow_ws_answer_mode: Literal["cumulative", "delta"] = Field(
        "delta",
        description="RAGFlow WebSocket answers: delta (what its WebSocket clients append) "
        "or cumulative",
    )
    outbox_max_events: int = Field(
        256, ge=8, description="events queued per connection before deltas are merged"
    )
    outbox_max_chars: int | None = Field(
        1024 * 1024,
        ge=1024,
        description="characters of reply text queued per connection before it is dropped; "
        "empty for no limit",
    )
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="bytes, ≥ 1024")
    max_frame_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="bytes of one WebSocket frame or Socket.IO packet from a client, ≥ 1024",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )

    @field_validator("openai_api_base_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in urls]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or a CIDR") from None
        return entries

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, path: str) -> str:
        path = path.strip()
        if path and (not path.startswith("/") or "?" in path or "#" in path):
            raise ValueError(f"{path!r} is not a path like /chat")
        return "" if path in ("", "/") else "/" + path.strip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# Environment variable → field.  Open WebUI's names first, then ours.
ENV_NAMES: dict[str, str] = {
    "WEBUI_SECRET_KEY": "secret_key",
    "OPENAI_API_BASE_URLS": "openai_api_base_urls",
    "OPENAI_API_BASE_URL": "openai_api_base_urls",
    "OPENAI_API_KEYS": "openai_api_keys",
    "OPENAI_API_KEY": "openai_api_keys",
    "CORS_ALLOW_ORIGIN": "cors_allow_origin",
    "DATA_DIR": "data_dir",
    "DATABASE_URL": "database_url",
    "WEBSOCKET_MANAGER": "websocket_manager",
    "REDIS_URL": "redis_url",
    "ENABLE_WEBSOCKET_SUPPORT": "enable_websocket_support",
    "ENABLE_SIGNUP": "enable_signup",
}
for _name in Settings.model_fields:
    if _name not in ENV_NAMES.values():
        ENV_NAMES[f"GATEWAY_{_name.upper()}"] = _name

_LIST_FIELDS = {"openai_api_base_urls", "openai_api_keys", "cors_allow_origin", "trusted_proxies"}
_NULLABLE_FIELDS = {
    name for name, info in Settings.model_fields.items() if info.default is None
} | {"jwt_expires_in_s", "upstream_read_timeout_s", "outbox_max_chars"}


def env_name(field: str) -> str:
    """The environment variable an operator sets for `field` (the first, if several)."""
    for env, name in ENV_NAMES.items():
        if name == field:
            return env
    raise KeyError(field)


def _from_env(field: str, raw: str) -> Any:
    if field in _LIST_FIELDS:
        return [part.strip() for part in raw.split(";") if part.strip()]
    if field == "api_keys":
        pairs = [part.strip() for part in raw.split(";") if part.strip()]
        parsed: dict[str, str] = {}
        for pair in pairs:
            key, sep, user = pair.partition("=")
            if not sep or not key.strip() or not user.strip():
                raise SettingsError(
                    f"GATEWAY_API_KEYS: {pair!r} is not key=user_id; "
                    "accepts ';'-separated key=user_id pairs"
                )
            parsed[key.strip()] = user.strip()
        return parsed
    if field in _NULLABLE_FIELDS and raw.strip() == "":
        return None
    return raw


def load(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (if any) and the environment; raise SettingsError on a bad value."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get("GATEWAY_CONFIG"):
        config_file = Path(env["GATEWAY_CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"config file {config_file}: expected a mapping of settings")
        for key, value in (loaded or {}).items():
            if key not in Settings.model_fields:
                raise SettingsError(f"config file {config_file}: unknown setting {key!r}")
            values[key] = value
    # Later names in ENV_NAMES are the singular aliases; the plural wins when both are set.
    for env_key in reversed(list(ENV_NAMES)):
        if env_key in env:
            values[ENV_NAMES[env_key]] = _from_env(ENV_NAMES[env_key], env[env_key])
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        info = Settings.model_fields.get(field)
        accepts = info.description if info is not None else ""
        got = values.get(field)
        raise SettingsError(
            f"{env_name(field) if field in Settings.model_fields else field}={got!r} "
            f"is invalid ({first['msg']}); accepts {accepts}"
        ) from None


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as an operator should see them: secrets masked."""
    shown = settings.model_dump(mode="json")
    if shown["secret_key"]:
        shown["secret_key"] = "***"
    shown["openai_api_keys"] = ["***" if key else "" for key in shown["openai_api_keys"]]
    shown["api_keys"] = {f"{key[:6]}…": user for key, user in shown["api_keys"].items()}
    return shown
