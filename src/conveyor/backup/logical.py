"""An engine-neutral logical export of the whole database, and its import.

Export: every table of :data:`conveyor.store.schema.metadata` (``sorted_tables``, so a
table another module adds is included with no change here), read in **one consistent
snapshot**:

* PostgreSQL: one ``REPEATABLE READ READ ONLY`` transaction: every table is read as of
  the same instant, while builds go on being written;
* SQLite: the online backup API (``sqlite3.Connection.backup``) copies the live file
  page by page into a temporary file (a consistent copy even while writers commit),
  and the export reads that copy.

Each table becomes ``db/TABLE.jsonl.gz``: a header line (table, columns and their
value kinds) then one JSON array per row, ordered by primary key. Values keep their
type: datetimes as ISO-8601 with time zone, bytes as base64, JSON columns as JSON.

Import: the target's schema comes from Alembic (``upgrade`` to head), then the rows go
in foreign-key order in ONE transaction, then PostgreSQL's id sequences are moved past
the highest id. One format serves SQLite→SQLite, PostgreSQL→PostgreSQL, SQLite→
PostgreSQL and back, which is also what ``conveyor store migrate`` uses.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import importlib
import json
import pkgutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    inspect,
    select,
)
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from conveyor.errors import Conflict, InvalidInput
from conveyor.store.migrate import upgrade
from conveyor.store.schema import metadata

BATCH = 2000
FORMAT = 1

#: How a column's values are written: "datetime", "bytes", "json" or "plain".
Kinds = dict[str, str]


def load_all_tables() -> list[Table]:
    """Import every ``conveyor.store`` module (each may add tables to ``metadata``),
    then return all tables in foreign-key order."""
    import conveyor.store as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("migrations",):
            importlib.import_module(f"conveyor.store.{module.name}")
    return list(metadata.sorted_tables)


def column_kind(column: Any) -> str:
    kind = column.type
    if isinstance(kind, LargeBinary):
        return "bytes"
    if isinstance(kind, DateTime) or isinstance(getattr(kind, "impl", None), DateTime):
        return "datetime"
    if isinstance(kind, JSON):
        return "json"
    return "plain"


def encode(value: Any, kind: str) -> Any:
    if value is None or kind in ("plain", "json"):
        return value
    if kind == "datetime":
        assert isinstance(value, datetime)
        return value.isoformat()
    return base64.b64encode(value).decode("ascii")


def decode(value: Any, kind: str) -> Any:
    if value is None or kind in ("plain", "json"):
        return value
    if kind == "datetime":
        return datetime.fromisoformat(value)
    return base64.b64decode(value)


@dataclass
class ExportResult:
    database: str  # "sqlite" or "postgresql"
    revision: str | None
    row_counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # table -> .jsonl.gz


def dialect_of(url: str) -> str:
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith(("postgresql", "postgres://")):
        return "postgresql"
    raise InvalidInput(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite+aiosqlite:///").removeprefix("sqlite:///"))


def _sqlite_online_copy(source: Path, dest: Path) -> None:
    if not source.is_file():
        raise InvalidInput(f"no SQLite database at {source}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        # One step (pages=-1): the copy is one read transaction, consistent and never
        # restarted by the controller's commits (WAL readers do not block writers).
        # Copying in slices would restart from scratch whenever another connection
        # writes, which on a busy controller could go on forever.
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()


@asynccontextmanager
async def snapshot(url: str, scratch: Path) -> AsyncIterator[AsyncConnection]:
    """A connection that sees the whole database at one instant (see module doc)."""
    if dialect_of(url) == "sqlite":
        copy = scratch / "snapshot.db"
        await asyncio.to_thread(_sqlite_online_copy, sqlite_path(url), copy)
        engine = create_async_engine(f"sqlite+aiosqlite:///{copy}")
        try:
            async with engine.connect() as conn:
                yield conn
        finally:
            await engine.dispose()
            copy.unlink(missing_ok=True)
        return
    from conveyor.store.postgres import asyncpg_url

    engine = create_async_engine(asyncpg_url(url), isolation_level="REPEATABLE READ")
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(postgresql_readonly=True)
            async with conn.begin():
                level = await conn.scalar(sql_text("SHOW transaction_isolation"))
                readonly = await conn.scalar(sql_text("SHOW transaction_read_only"))
                if (level, readonly) != ("repeatable read", "on"):  # never export a torn view
                    raise RuntimeError(f"snapshot transaction is {level}/{readonly}")
                yield conn
    finally:
        await engine.dispose()


async def _revision(conn: AsyncConnection) -> str | None:
    names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    if "alembic_version" not in names:
        return None
    return await conn.scalar(sql_text("SELECT version_num FROM alembic_version"))  # type: ignore[no-any-return]


async def export_database(
    url: str, out_dir: Path, on_rows: Callable[[str, int], None] | None = None
) -> ExportResult:
    """Write ``out_dir/TABLE.jsonl.gz`` for every table, all from one snapshot."""
    tables = load_all_tables()
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    result = ExportResult(database=dialect_of(url), revision=None)
    with tempfile.TemporaryDirectory(prefix="conveyor-snapshot-") as scratch:
        async with snapshot(url, Path(scratch)) as conn:
            result.revision = await _revision(conn)
            if result.revision is None:
                raise InvalidInput(f"{_safe(url)} has no Conveyor schema (never migrated)")
            present = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            for table in tables:
                if table.name not in present:
                    continue  # a table of a newer schema than this database has
                path = out_dir / f"{table.name}.jsonl.gz"
                result.row_counts[table.name] = await _export_table(conn, table, path, on_rows)
                result.files[table.name] = path
    return result


async def _export_table(
    conn: AsyncConnection,
    table: Table,
    path: Path,
    on_rows: Callable[[str, int], None] | None,
) -> int:
    kinds = {c.name: column_kind(c) for c in table.columns}
    names = list(kinds)
    order = list(table.primary_key.columns) or list(table.columns)
    count = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as fh:
        header = {"format": FORMAT, "table": table.name, "columns": names, "kinds": kinds}
        fh.write(json.dumps(header) + "\n")
        stream = await conn.stream(select(table).order_by(*order))
        async for rows in stream.partitions(BATCH):
            lines = [
                json.dumps([encode(row[i], kinds[n]) for i, n in enumerate(names)]) for row in rows
            ]
            fh.write("\n".join(lines) + "\n")
            count += len(rows)
            if on_rows is not None:
                on_rows(table.name, len(rows))
    return count


@dataclass(frozen=True)
class TableFile:
    table: str
    columns: list[str]
    kinds: Kinds
    path: Path


def read_header(path: Path) -> TableFile:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, EOFError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: not a Conveyor table export ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidInput(f"{path.name}: not a Conveyor table export (format {FORMAT})")
    return TableFile(header["table"], list(header["columns"]), dict(header["kinds"]), path)


def read_rows(table_file: TableFile) -> Iterator[dict[str, Any]]:
    kinds = [table_file.kinds[c] for c in table_file.columns]
    with gzip.open(table_file.path, "rt", encoding="utf-8") as fh:
        fh.readline()
        for line in fh:
            values = json.loads(line)
            yield {
                c: decode(v, k) for c, v, k in zip(table_file.columns, values, kinds, strict=True)
            }


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def plan_import(files: dict[str, Path]) -> list[tuple[Table, TableFile]]:
    """Check every export file against this version's schema before anything is written."""
    tables = {t.name: t for t in load_all_tables()}
    unknown = sorted(set(files) - set(tables))
    if unknown:
        raise InvalidInput(
            f"the backup has tables this Conveyor does not know: {', '.join(unknown)}"
            " (restore with the Conveyor version that made it, or a newer one)"
        )
    plan = []
    for table in tables.values():
        if table.name not in files:
            continue
        table_file = read_header(files[table.name])
        extra = [c for c in table_file.columns if c not in table.columns]
        if extra or table_file.table != table.name:
            raise InvalidInput(
                f"{table.name}: the backup has columns this schema lacks: {', '.join(extra)}"
            )
        plan.append((table, table_file))
    order = {t.name: i for i, t in enumerate(metadata.sorted_tables)}
    return sorted(plan, key=lambda p: order[p[0].name])


async def existing_rows(url: str) -> dict[str, int]:
    """Rows per Conveyor table already in the database at ``url`` (absent tables: none)."""
    from conveyor.store import open_store

    tables = load_all_tables()
    store = open_store(url)
    try:
        async with store.read() as conn:
            present = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            counts = {}
            for table in tables:
                if table.name in present:
                    n = await conn.scalar(select(func.count()).select_from(table))
                    if n:
                        counts[table.name] = int(n)
            return counts
    finally:
        await store.close()


async def import_database(
    url: str,
    files: dict[str, Path],
    *,
    force: bool = False,
    on_rows: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create the schema at ``url`` and load every table export into it in one
    transaction. Refuses a database that holds any Conveyor row unless ``force`` (then
    its rows are deleted in the same transaction). Returns rows loaded per table."""
    from conveyor.store import open_store

    plan = plan_import(files)
    if not force:
        found = await existing_rows(url)
        if found:
            listed = ", ".join(f"{t} ({n} rows)" for t, n in sorted(found.items()))
            raise Conflict(
                f"{_safe(url)} is not empty: {listed}; restore into an empty database,"
                " or pass --force to replace its contents"
            )
    store = open_store(url)
    loaded: dict[str, int] = {}
    try:
        await upgrade(store.write_engine)
        async with store.write() as conn:
            if force:
                for table in reversed(load_all_tables()):
                    await conn.execute(delete(table))
            for table, table_file in plan:
                loaded[table.name] = 0
                copy = store.dialect == "postgresql" and _copyable(table, table_file)
                for batch in _batches(read_rows(table_file), BATCH):
                    if copy:
                        await _copy_batch(conn, table, table_file, batch)
                    else:
                        await conn.execute(table.insert(), batch)
                    loaded[table.name] += len(batch)
                    if on_rows is not None:
                        on_rows(table.name, len(batch))
            if store.dialect == "postgresql":
                await _reset_sequences(conn, [t for t, _ in plan])
    finally:
        await store.close()
    return loaded


#: Column types whose Python values asyncpg's COPY takes as they are (JSON as text).
_COPY_TYPES = (Integer, String, Boolean, JSON, DateTime, LargeBinary)


def _copyable(table: Table, table_file: TableFile) -> bool:
    """Whether PostgreSQL's COPY can load this table: every column is in the export (a
    missing one needs SQLAlchemy's Python-side default) and of a plain type."""
    if set(table_file.columns) != {c.name for c in table.columns}:
        return False
    for column in table.columns:
        kind = column.type
        if isinstance(kind, JSON):
            if type(kind) is not JSON:  # a JSON subtype (JSONB...) with its own encoding
                return False
        elif not isinstance(kind, _COPY_TYPES) and not isinstance(
            getattr(kind, "impl", None), DateTime
        ):
            return False
    return True


async def _copy_batch(
    conn: AsyncConnection, table: Table, table_file: TableFile, batch: list[dict[str, Any]]
) -> None:
    """Bulk-load rows with COPY (binary) on the transaction's own connection: several
    times faster than INSERTs, which matters for 100,000s of builds."""
    columns = table_file.columns
    json_columns = {c for c in columns if table_file.kinds[c] == "json"}
    records = [
        tuple(
            json.dumps(row[c]) if c in json_columns and row[c] is not None else row[c]
            for c in columns
        )
        for row in batch
    ]
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.copy_records_to_table(table.name, records=records, columns=columns)


async def _reset_sequences(conn: AsyncConnection, tables: list[Table]) -> None:
    """Move each id sequence past the highest restored id (rows went in with their ids)."""
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer) or pk[0].autoincrement is False:
            continue
        sequence = await conn.scalar(
            sql_text("SELECT pg_get_serial_sequence(:t, :c)"),
            {"t": f'"{table.name}"', "c": pk[0].name},
        )
        if sequence is None:
            continue
        await conn.execute(
            sql_text(
                f'SELECT setval(:s, COALESCE((SELECT MAX("{pk[0].name}") FROM "{table.name}"), 1),'
                f' (SELECT MAX("{pk[0].name}") FROM "{table.name}") IS NOT NULL)'
            ),
            {"s": sequence},
        )


def _safe(url: str) -> str:
    """A database URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
