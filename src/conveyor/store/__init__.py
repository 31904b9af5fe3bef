"""Conveyor's persistent state behind one interface, on SQLite or PostgreSQL."""

from __future__ import annotations

from conveyor.store.store import Store


def open_store(url: str) -> Store:
    """A store for a database URL (``sqlite:///path`` or ``postgresql://...``)."""
    if url.startswith("sqlite"):
        from conveyor.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql", "postgres://")):
        from conveyor.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


__all__ = ["Store", "open_store"]
