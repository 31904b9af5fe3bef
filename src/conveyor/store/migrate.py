"""Schema migrations (Alembic), run at controller start and by `conveyor db upgrade`.

On PostgreSQL an advisory lock makes concurrent controllers migrate one at a
time; the others then find the schema current and do nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.core.schema_compat import SchemaFit, schema_fit

MIGRATIONS = Path(__file__).parent / "migrations"
ADVISORY_LOCK_ID = 0x636F6E76  # "conv"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision this code ships."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


def fit(revision: str | None) -> SchemaFit:
    """How the database's ``revision`` fits this code (rolling upgrades)."""
    return schema_fit(revision, head_revision(), known_revisions())


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
    # A newer schema (a later release migrated it, expand/contract) is left alone:
    # this older controller runs with it during a rolling upgrade or a rollback.
    if not fit(_current(connection)).migrates:
        return
    command.upgrade(alembic_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
