"""The schema, as numbered SQL files (`0001_initial.sql`, ...): each applied once, in
order, by `gateway/store/sql/migrations.py`; written once for SQLite and PostgreSQL."""
