"""The rolling-upgrade rule: which database revisions a controller serves with."""

from __future__ import annotations

import pytest

from conveyor.core.schema_compat import SchemaFit, schema_fit

KNOWN = ("0001", "0002", "0003")


@pytest.mark.parametrize(
    ("database", "fit", "serves", "migrates"),
    [
        ("0003", SchemaFit.CURRENT, True, False),
        ("0002", SchemaFit.OLDER, False, True),
        ("0001", SchemaFit.OLDER, False, True),
        (None, SchemaFit.EMPTY, False, True),
        # A later release's expand migration: run with it, never migrate it.
        ("0004_next_release", SchemaFit.NEWER, True, False),
    ],
)
def test_schema_fit(database: str | None, fit: SchemaFit, serves: bool, migrates: bool) -> None:
    result = schema_fit(database, "0003", KNOWN)
    assert result is fit
    assert result.serves is serves
    assert result.migrates is migrates
