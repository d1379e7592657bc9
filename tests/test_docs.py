"""The README and the example config stay true to the settings."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import ENV_NAMES, Settings, load
from gateway.settings.describe import example_yaml, readme_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in ENV_NAMES if f"`{name}`" not in readme]
    assert missing == []


def test_example_config_has_every_setting_at_its_default() -> None:
    example = load(ROOT / "config" / "gateway.example.yaml", environ={})
    assert example == Settings.model_validate({})
    text = (ROOT / "config" / "gateway.example.yaml").read_text()
    assert text == example_yaml(), (
        "regenerate: python -m gateway.settings example > config/gateway.example.yaml"
    )


def test_readme_table_of_settings_is_the_models() -> None:
    assert readme_table() in (ROOT / "README.md").read_text(), (
        "regenerate the README's table: python -m gateway.settings table"
    )


def test_limits_lists_every_limit_setting() -> None:
    limits = (ROOT / "LIMITS.md").read_text()
    for field in Settings.model_fields:
        if field.endswith(("_s", "_bytes", "_events", "_connections")):
            env = next(name for name, f in ENV_NAMES.items() if f == field)
            assert env in limits, env


def test_every_link_in_the_docs_stays_inside_the_repository() -> None:
    """Relative links resolve to files here; nothing points at documents elsewhere."""
    import re

    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "LIMITS.md"]:
        text = doc.read_text()
        assert "shared/" not in text and "seeds/" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links {target}"


def test_every_source_path_the_docs_name_exists() -> None:
    """`gateway/…py`, `tests/…py`, `bench/…py` named in a document is a file here (a
    module that moved is renamed in the documents too)."""
    import re

    docs = [ROOT / name for name in ("README.md", "LIMITS.md", "SECURITY.md")]
    for doc in [*docs, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]:
        named = set(re.findall(r"\b((?:gateway|tests|bench)/[\w/]+\.py)\b", doc.read_text()))
        missing = sorted(path for path in named if not (ROOT / path).is_file())
        assert missing == [], f"{doc.name} names files that are not here: {missing}"
