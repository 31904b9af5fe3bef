"""Which database schema a controller can run with, for rolling upgrades.

Migrations follow expand/contract (docs/upgrading.md): release N+1 only *adds* to the
schema (new tables, nullable columns, new indexes), so release N keeps working on it,
and removals wait for a later release once no N controller is left. During a rolling
upgrade the first N+1 controller migrates the database; the N controllers still
running — or restarted, or rolled back to — then find a revision their code does not
know. That revision is newer, written by a later release, and safe by the rule above:
they must neither refuse traffic (``/readyz``) nor try to migrate it.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum


class SchemaFit(StrEnum):
    #: The database is at this code's head revision.
    CURRENT = "current"
    #: A revision this code does not know: a later release migrated (expanded) it.
    NEWER = "newer"
    #: A revision this code knows, before its head: it has to migrate first.
    OLDER = "older"
    #: No schema at all (a new, empty database).
    EMPTY = "empty"

    @property
    def serves(self) -> bool:
        """Whether a controller with this fit may serve traffic."""
        return self in (SchemaFit.CURRENT, SchemaFit.NEWER)

    @property
    def migrates(self) -> bool:
        """Whether a starting controller runs its migrations."""
        return self in (SchemaFit.OLDER, SchemaFit.EMPTY)


def schema_fit(database: str | None, head: str | None, known: Collection[str]) -> SchemaFit:
    """How the database's revision ``database`` relates to this code's migrations:
    its ``head`` and every revision it ships (``known``)."""
    if database is None:
        return SchemaFit.EMPTY
    if database == head:
        return SchemaFit.CURRENT
    if database in known:
        return SchemaFit.OLDER
    return SchemaFit.NEWER
