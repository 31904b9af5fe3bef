"""`conveyor store migrate`: copy Conveyor's database to another one (any kind to any
kind) through the logical export, then compare every table's row count."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.backup import logical
from conveyor.backup.progress import QUIET, Reporter


@dataclass
class MigrateReport:
    source_counts: dict[str, int]
    dest_counts: dict[str, int]
    mismatches: list[str] = field(default_factory=list)


async def migrate_store(
    source_url: str, dest_url: str, *, force: bool = False, reporter: Reporter = QUIET
) -> MigrateReport:
    with tempfile.TemporaryDirectory(prefix="conveyor-migrate-") as scratch:
        reporter.stage("export", None)
        export = await logical.export_database(
            source_url, Path(scratch), lambda _t, n: reporter.advance(n)
        )
        reporter.stage("import", sum(export.row_counts.values()))
        await logical.import_database(
            dest_url, export.files, force=force, on_rows=lambda _t, n: reporter.advance(n)
        )
    dest_counts = await table_counts(dest_url)
    mismatches = [
        f"{t}: {n} at source, {dest_counts.get(t, 0)} at destination"
        for t, n in sorted(export.row_counts.items())
        if dest_counts.get(t, 0) != n
    ]
    return MigrateReport(export.row_counts, dest_counts, mismatches)


async def table_counts(url: str) -> dict[str, int]:
    """Rows in every Conveyor table (0 included) at ``url``."""
    counts = {t.name: 0 for t in logical.load_all_tables()}
    counts.update(await logical.existing_rows(url))
    return counts
