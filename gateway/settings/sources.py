"""Where settings come from — flags, then the environment, then the YAML file,
then the defaults — and errors that name the setting as the operator wrote it.

This is the only module that reads `os.environ`.  Each field has the
environment variables that set it, in order of precedence: ours, then the
Open WebUI name an operator's existing `.env` may hold (`PORT`,
`GLOBAL_LOG_LEVEL`, `JWT_EXPIRES_IN`, `WEBSOCKET_REDIS_URL`, `DEFAULT_MODELS`).
A value that cannot be used is one `SettingsError` line:

    GATEWAY_PORT='70000': Input should be less than or equal to 65535; accepts …
    gateway.yaml:3: port: 70000: Input should be …; accepts …
    --port 70000: Input should be …; accepts …
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from gateway.edge import redact
from gateway.settings.model import Settings


class SettingsError(Exception):
    """A setting has a value we cannot use; the message is one line for the operator."""


# -- environment variables ----------------------------------------------------------
def _duration_s(raw: str) -> str:
    """Open WebUI's JWT_EXPIRES_IN ("4w", "1h30m", "-1" or "0" for never) in seconds."""
    raw = raw.strip()
    if raw in ("-1", "0"):
        return ""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ValueError("is not a duration like 4w, 7d, 12h or 90m (-1 for no expiry)")
    return str(max(1, round(sum(float(n) * units[u] for n, u in parts))))


def _first_model(raw: str) -> str:
    """Open WebUI's DEFAULT_MODELS is comma-separated; the first is ours."""
    return next((part.strip() for part in raw.split(",") if part.strip()), "")


@dataclass(frozen=True)
class EnvVar:
    name: str
    convert: Callable[[str], str] | None = None


# field → its variables, the first that is set wins.  Fields not listed here
# are GATEWAY_<FIELD>.  Open WebUI's names stand alone where Open WebUI has
# the setting; where ours differs, Open WebUI's comes second.
ENV_VARS: dict[str, tuple[EnvVar, ...]] = {
    "secret_key": (EnvVar("WEBUI_SECRET_KEY"),),
    "port": (EnvVar("GATEWAY_PORT"), EnvVar("PORT")),
    "openai_api_base_urls": (EnvVar("OPENAI_API_BASE_URLS"), EnvVar("OPENAI_API_BASE_URL")),
    "openai_api_keys": (EnvVar("OPENAI_API_KEYS"), EnvVar("OPENAI_API_KEY")),
    "cors_allow_origin": (EnvVar("CORS_ALLOW_ORIGIN"),),
    "data_dir": (EnvVar("DATA_DIR"),),
    "database_url": (EnvVar("DATABASE_URL"),),
    "websocket_manager": (EnvVar("WEBSOCKET_MANAGER"),),
    # Open WebUI's sockets use WEBSOCKET_REDIS_URL and fall back to REDIS_URL.
    "redis_url": (EnvVar("WEBSOCKET_REDIS_URL"), EnvVar("REDIS_URL")),
    "enable_websocket_support": (EnvVar("ENABLE_WEBSOCKET_SUPPORT"),),
    "enable_signup": (EnvVar("ENABLE_SIGNUP"),),
    "log_level": (EnvVar("GATEWAY_LOG_LEVEL"), EnvVar("GLOBAL_LOG_LEVEL")),
    "jwt_expires_in_s": (
        EnvVar("GATEWAY_JWT_EXPIRES_IN_S"),
        EnvVar("JWT_EXPIRES_IN", _duration_s),
    ),
    "default_model": (EnvVar("GATEWAY_DEFAULT_MODEL"), EnvVar("DEFAULT_MODELS", _first_model)),
    # Open WebUI's TASK_MODEL is the same setting: the model its background tasks use.
    "task_model": (EnvVar("GATEWAY_TASK_MODEL"), EnvVar("TASK_MODEL")),
}
for _name in Settings.model_fields:
    ENV_VARS.setdefault(_name, (EnvVar(f"GATEWAY_{_name.upper()}"),))

# Every variable the gateway reads → its field (the README lists them all).
ENV_NAMES: dict[str, str] = {var.name: name for name, vars_ in ENV_VARS.items() for var in vars_}
CONFIGENV_VARS = "GATEWAY_CONFIG"

# Open WebUI variables that mean something the gateway does differently.
_NOT_READ = {
    "OLLAMA_BASE_URL": "the gateway reaches Ollama through its OpenAI API: set "
    "OPENAI_API_BASE_URL=http://<ollama host>:11434/v1",
    "OLLAMA_BASE_URLS": "the gateway reaches Ollama through its OpenAI API: set "
    "OPENAI_API_BASE_URLS to each server's http://<host>:11434/v1",
    "HOST": "use GATEWAY_HOST",
    "WEBUI_AUTH": "the gateway always authenticates; there is no anonymous mode",
}


def env_name(field_name: str) -> str:
    """The environment variable an operator sets for `field_name` (the first, if several)."""
    return ENV_VARS[field_name][0].name


# -- where a value came from --------------------------------------------------------
SECRET_FIELDS = frozenset({"secret_key", "openai_api_keys", "api_keys", "metrics_token"})
URL_FIELDS = frozenset({"database_url", "redis_url", "openai_api_base_urls"})


@dataclass(frozen=True)
class Source:
    """A setting as the operator wrote it: an environment variable, a YAML key
    (with its file and line), a command-line flag, or the default."""

    kind: Literal["default", "env", "file", "flag"]
    name: str
    raw: Any = None
    where: str = ""

    def label(self) -> str:
        if self.kind == "file":
            return f"{self.where}: {self.name}"
        if self.kind == "default":
            return f"{env_name(self.name)} (default)"
        return self.name

    def shown(self, field_name: str) -> str:
        """The label with the value, secrets masked: `GATEWAY_PORT='70000'`."""
        value = self.raw
        if field_name in SECRET_FIELDS:
            value = redact.MASK
        elif field_name in URL_FIELDS and isinstance(value, str):
            value = redact.url(value)
        if self.kind == "env":
            return f"{self.name}={value!r}"
        if self.kind == "flag":
            return f"{self.name} {value}"
        if self.kind == "file":
            return f"{self.label()}: {value!r}"
        return self.label()


@dataclass(frozen=True)
class Loaded:
    """The settings, where each came from, and what deserves a warning."""

    settings: Settings
    sources: Mapping[str, Source]
    warnings: tuple[str, ...] = ()
    config_file: Path | None = None

    def source(self, field_name: str) -> Source:
        return self.sources.get(field_name) or Source("default", field_name)

    def error(self, field_name: str, problem: str) -> SettingsError:
        """A refusal naming the setting as written: `DATABASE_URL='…': problem`."""
        return SettingsError(f"{self.source(field_name).shown(field_name)}: {problem}")


# -- reading ------------------------------------------------------------------------
def read(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> Loaded:
    """Flags (`{field: (flag, value)}`) over the environment over the file; raise
    `SettingsError` on the first value that cannot be used."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIGENV_VARS):
        config_file = Path(env[CONFIGENV_VARS])
    sources: dict[str, Source] = {}
    if config_file is not None:
        sources.update(_from_file(config_file))
    sources.update(_from_env(env))
    for name, (flag, value) in (flags or {}).items():
        sources[name] = Source("flag", flag, value)
    values = {name: source.raw for name, source in sources.items()}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise _first_error(exc, sources) from None
    loaded = Loaded(settings, sources, config_file=config_file)
    _check_across(loaded)
    return Loaded(settings, sources, tuple(_warnings(loaded, env)), config_file)


def load(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings alone (see `read`)."""
    return read(config_file, environ).settings


def _from_env(env: Mapping[str, str]) -> dict[str, Source]:
    found: dict[str, Source] = {}
    for name, variables in ENV_VARS.items():
        var = next((v for v in variables if v.name in env), None)
        if var is None:
            continue
        raw = env[var.name]
        if var.convert is not None:
            try:
                raw = var.convert(raw)
            except ValueError as exc:
                raise SettingsError(f"{var.name}={raw!r} {exc}") from None
        found[name] = Source("env", var.name, raw)
    return found


def _from_file(path: Path) -> dict[str, Source]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"config file {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "cannot be parsed"
        raise SettingsError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not isinstance(node, yaml.MappingNode):
        raise SettingsError(
            f"config file {path}: expected settings as `key: value` lines, "
            f"found a {type(loaded).__name__}"
        )
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in lines:  # YAML takes the last silently: one of them is a mistake
            raise SettingsError(
                f"{path}:{line}: {key!r} is given twice (first on line {lines[key]}); keep one"
            )
        lines[key] = line
    found: dict[str, Source] = {}
    for key, value in loaded.items():
        key = str(key)
        where = f"{path}:{lines.get(key, '?')}"
        if key not in Settings.model_fields:
            raise SettingsError(f"{where}: unknown setting {key!r}{_did_you_mean_key(key)}")
        found[key] = Source("file", key, value, where)
    return found


def _did_you_mean_key(key: str) -> str:
    if key in ENV_NAMES:
        return f"; the YAML key for {key} is {ENV_NAMES[key]}"
    close = difflib.get_close_matches(key.lower(), Settings.model_fields, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_error(exc: ValidationError, sources: Mapping[str, Source]) -> SettingsError:
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    message = str(first["msg"]).removeprefix("Value error, ")
    info = Settings.model_fields.get(name)
    accepts = f"; accepts {info.description}" if info is not None and info.description else ""
    source = sources.get(name) or Source("default", name)
    return SettingsError(f"{source.shown(name)}: {message}{accepts}")


def _check_across(loaded: Loaded) -> None:
    """What no single field can check."""
    settings = loaded.settings
    keys, urls = settings.openai_api_keys, settings.openai_api_base_urls
    key_label = loaded.source("openai_api_keys").label()
    url_label = loaded.source("openai_api_base_urls").label()
    if urls and len(keys) > len(urls):  # (keys and no URL at all: a warning)
        raise SettingsError(
            f"{key_label} has {len(keys)} key(s) for {len(urls)} base URL(s) in {url_label}; "
            f"give one key per URL, ';'-separated, in the same order (empty for none)"
        )
    for number, (url, key) in enumerate(zip(urls, keys, strict=False), 1):
        if key and urlsplit(url).username is not None:
            raise SettingsError(
                f"{url_label}: URL {number} holds a user name and {key_label} a key for it; "
                "a request carries one or the other: give the key alone"
            )


def _warnings(loaded: Loaded, env: Mapping[str, str]) -> list[str]:
    settings = loaded.settings
    found: list[str] = []
    known = set(ENV_NAMES) | {CONFIGENV_VARS}
    for name in sorted(env):
        if name.startswith("GATEWAY_") and name not in known:
            # GATEWAY_DATABASE_URL: a name the gateway reads, with our prefix added;
            # the hint is that setting's first variable (DATABASE_URL).
            bare = name.removeprefix("GATEWAY_")
            if bare in ENV_NAMES:
                close = [ENV_VARS[ENV_NAMES[bare]][0].name]
            else:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            found.append(f"{name} is not a setting of the gateway and is ignored{hint}")
        elif name in _NOT_READ and env[name].strip():
            found.append(f"{name} is not read: {_NOT_READ[name]}")
    for url in settings.openai_api_base_urls:
        if not re.search(r"/v\d+[a-z0-9]*(/openai)?$", url):
            found.append(
                f"{loaded.source('openai_api_base_urls').label()}: {redact.url(url)!r} does not "
                f"end in /v1, where most OpenAI-compatible servers serve their API "
                f"(`gateway check-config --connect` tries it)"
            )
    if settings.websocket_manager == "redis" and not settings.secret_key:
        found.append(
            "WEBSOCKET_MANAGER=redis without WEBUI_SECRET_KEY: each replica would sign with "
            "its own key; set the same WEBUI_SECRET_KEY on every replica"
        )
    if settings.openai_api_keys and not settings.openai_api_base_urls:
        found.append(
            f"{loaded.source('openai_api_keys').label()} is set but no model server is: the "
            "key is not used; set OPENAI_API_BASE_URL (https://api.openai.com/v1 for OpenAI) "
            "to use it"
        )
    redis_source = loaded.sources.get("redis_url")
    default_redis = Settings.model_fields["redis_url"].default
    if (
        redis_source is not None
        and settings.redis_url != default_redis  # the example config's value
        and settings.websocket_manager != "redis"
    ):
        found.append(
            f"{redis_source.label()} is set but WEBSOCKET_MANAGER is not redis: "
            f"this replica runs alone and does not use Redis"
        )
    return found
