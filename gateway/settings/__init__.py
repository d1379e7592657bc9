"""Settings, read once: the model (`model.py`), where each value came from
(`sources.py`), and how an operator sees them (`describe.py`)."""

from __future__ import annotations

from gateway.settings.describe import describe
from gateway.settings.model import Settings
from gateway.settings.sources import (
    ENV_NAMES,
    Loaded,
    SettingsError,
    Source,
    env_name,
    load,
    read,
)

__all__ = [
    "ENV_NAMES",
    "Loaded",
    "Settings",
    "SettingsError",
    "Source",
    "describe",
    "env_name",
    "load",
    "read",
]
