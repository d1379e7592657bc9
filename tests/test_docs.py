"""The README and the example config stay true to the settings."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import ENV_NAMES, Settings, load

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in ENV_NAMES if f"`{name}`" not in readme]
    assert missing == []


def test_example_config_has_every_setting_at_its_default() -> None:
    example = load(ROOT / "config" / "gateway.example.yaml", environ={})
    assert example == Settings()
    text = (ROOT / "config" / "gateway.example.yaml").read_text()
    assert all(f"\n{field}:" in text for field in Settings.model_fields)


def test_limits_lists_every_limit_setting() -> None:
    limits = (ROOT / "LIMITS.md").read_text()
    for field in Settings.model_fields:
        if field.endswith(("_s", "_bytes", "_events", "_connections")):
            env = next(name for name, f in ENV_NAMES.items() if f == field)
            assert env in limits, env
