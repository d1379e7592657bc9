"""Store errors, kept apart so drivers and the store can both raise them."""

from __future__ import annotations


class StoreError(Exception):
    pass


class Conflict(StoreError):
    """A duplicate id, email or share id."""
