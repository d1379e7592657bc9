"""Settings as an operator reads them: `gateway check-config` (every value in
effect, no secret — passwords inside URLs and keys masked), and the two
documents that list every setting, generated from the model:
`python -m gateway.settings example > config/gateway.example.yaml` and
`python -m gateway.settings table` (the README's table)."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.edge import redact
from gateway.edge.secrets import SECRET_KEY_FILE
from gateway.settings.model import Settings
from gateway.settings.sources import ENV_VARS, SECRET_FIELDS, URL_FIELDS, Loaded


def describe(loaded: Loaded) -> dict[str, Any]:
    shown = loaded.settings.model_dump(mode="json")
    for name in URL_FIELDS:
        value = shown[name]
        if isinstance(value, list):
            shown[name] = [redact.url(v) for v in value]
        else:
            shown[name] = redact.url(value)
    for name in SECRET_FIELDS - {"secret_key"}:
        value = shown[name]
        if isinstance(value, dict):
            # key=user pairs: who has a static key, never the key.
            shown[name] = [f"{redact.MASK}={user}" for user in value.values()]
        elif value is None or isinstance(value, str):
            shown[name] = redact.MASK if value else None
        else:
            shown[name] = [redact.MASK if v else "" for v in value]
    shown["secret_key"] = _secret_key(loaded)
    return shown


def _secret_key(loaded: Loaded) -> str:
    settings = loaded.settings
    if settings.secret_key:
        return f"{redact.MASK} (from {loaded.source('secret_key').label()})"
    path = (settings.data_dir / SECRET_KEY_FILE).resolve()
    if path.is_file():
        return f"{redact.MASK} (generated, kept in {path})"
    return f"none yet: generated into {path} on the first start"


# -- the documents that list every setting (kept equal by tests/test_docs.py) ----------
EXAMPLE_HEAD = """\
# Every setting of the gateway with its default. Copy, edit, and pass with
#   gateway serve --config gateway.yaml
# Environment variables win over this file (their names are in each comment).
# Units are in the names: _s seconds, _bytes bytes. A null limit is disabled.
# Lists may also be written as one ';'-separated string, as in the environment.
"""


def _default(name: str) -> Any:
    return Settings.model_validate({}).model_dump(mode="json")[name]


def example_yaml() -> str:
    """config/gateway.example.yaml: each setting at its default, with what it accepts."""
    parts = [EXAMPLE_HEAD]
    for name, info in Settings.model_fields.items():
        env = ", ".join(v.name for v in ENV_VARS[name])
        value = yaml.safe_dump({name: _default(name)}, sort_keys=False, allow_unicode=True)
        parts.append(f"\n# {info.description}. Env: {env}\n{value}")
    return "".join(parts)


def readme_table() -> str:
    """The README's table of settings."""
    rows = [
        "| variable | setting (YAML key) | default | accepts |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        env = " / ".join(f"`{v.name}`" for v in ENV_VARS[name])
        default = _default(name)
        if name == "secret_key":
            shown = "generated into `DATA_DIR/.webui_secret_key`"
        elif default in (None, "", [], {}):
            shown = "—"
        elif isinstance(default, list):
            shown = "`" + ";".join(default) + "`"
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| {env} | `{name}` | {shown} | {info.description} |")
    return "\n".join(rows) + "\n"

