"""Publications: where a build's ``publish`` steps put files (migration 0008).

One row per destination URL of a build: the agent reports each file once it reached
the repository; a re-sent report (its answer was lost) or a retried step that
publishes to the same URL again updates the row instead of adding one. Rows hold no
credentials (the agent strips ``user:password@`` from URLs before reporting).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    String,
    Table,
    UniqueConstraint,
    select,
    update,
)

from conveyor.errors import NotFound
from conveyor.store.schema import Id, builds, metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

__all__ = ["PublicationRecord", "list_publications", "publications", "record_publication"]

publications = Table(
    "publications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("step_key", String(200), nullable=False),
    Column("repository", String(20), nullable=False),  # http | maven | pypi
    Column("file", String(1000), nullable=False),  # workspace path; '' for a generated POM
    Column("url", String(2000), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("coordinates", String(500), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("build_id", "url", name="uq_publications_build_url"),
)


@dataclass(frozen=True)
class PublicationRecord:
    id: int
    build_id: int
    step_key: str
    repository: str
    file: str
    url: str
    size: int
    sha256: str
    coordinates: str | None
    created_at: datetime


async def record_publication(
    store: Store,
    build_id: int,
    *,
    step_key: str,
    repository: str,
    file: str,
    url: str,
    size: int,
    sha256: str,
    coordinates: str | None,
    now: datetime,
) -> None:
    """Insert the row, or update it when this build already published to ``url``."""
    values = {
        "step_key": step_key,
        "repository": repository,
        "file": file,
        "size": size,
        "sha256": sha256,
        "coordinates": coordinates,
        "created_at": now,
    }
    async with store.write() as conn:
        result = await conn.execute(
            store.insert_ignore(publications).values(build_id=build_id, url=url, **values)
        )
        if result.rowcount == 0:
            await conn.execute(
                update(publications)
                .where(publications.c.build_id == build_id, publications.c.url == url)
                .values(**values)
            )


async def list_publications(store: Store, build_id: int) -> list[PublicationRecord]:
    """A build's publications in the order they happened; NotFound for no such build."""
    async with store.read() as conn:
        exists = await conn.scalar(select(builds.c.id).where(builds.c.id == build_id))
        if exists is None:
            raise NotFound(f"build {build_id} not found")
        rows = (
            await conn.execute(
                select(publications)
                .where(publications.c.build_id == build_id)
                .order_by(publications.c.id)
            )
        ).all()
    return [
        PublicationRecord(
            id=r.id,
            build_id=r.build_id,
            step_key=r.step_key,
            repository=r.repository,
            file=r.file,
            url=r.url,
            size=r.size,
            sha256=r.sha256,
            coordinates=r.coordinates,
            created_at=r.created_at,
        )
        for r in rows
    ]
