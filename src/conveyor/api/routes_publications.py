"""Publications: agents report where a ``publish`` step put each file
(``POST /agent/v1/assignments/{id}/publications``), users read them
(``GET /api/v1/builds/{id}/publications``). Nothing here holds credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from conveyor.api.agent_protocol import AckOut, AgentIdHeader
from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.controller.wakeups import build_channel
from conveyor.store.publications import (
    PublicationRecord,
    list_publications,
    record_publication,
)

router = APIRouter(prefix="/api/v1", tags=["publications"])
agent_router = APIRouter(prefix="/agent/v1", tags=["agent protocol"])


class PublicationIn(BaseModel):
    step: Annotated[str, Field(min_length=1, max_length=200)]
    repository: Literal["http", "maven", "pypi"]
    file: Annotated[str, Field(max_length=1000)]
    url: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^https?://")]
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    coordinates: Annotated[str, Field(max_length=500)] | None = None


class PublicationOut(BaseModel):
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

    @classmethod
    def of(cls, p: PublicationRecord) -> PublicationOut:
        return cls(
            id=p.id,
            build_id=p.build_id,
            step_key=p.step_key,
            repository=p.repository,
            file=p.file,
            url=p.url,
            size=p.size,
            sha256=p.sha256,
            coordinates=p.coordinates,
            created_at=p.created_at,
        )


@agent_router.post("/assignments/{assignment_id}/publications")
async def report_publication(
    assignment_id: str,
    body: PublicationIn,
    agent_id: AgentIdHeader,
    runtime: RuntimeDep,
    _: CallerDep,
) -> AckOut:
    """One file reached a repository (re-sending the same report is harmless)."""
    build = await runtime.store.get_build_for_assignment(assignment_id, agent_id)
    await record_publication(
        runtime.store,
        build.id,
        step_key=body.step,
        repository=body.repository,
        file=body.file,
        url=body.url,
        size=body.size,
        sha256=body.sha256,
        coordinates=body.coordinates,
        now=runtime.clock(),
    )
    runtime.wakeups.notify(build_channel(build.id))
    return AckOut()


@router.get("/builds/{build_id}/publications")
async def build_publications(
    build_id: int, runtime: RuntimeDep, _: CallerDep
) -> list[PublicationOut]:
    """Where the build's ``publish`` steps put files, in the order they did."""
    return [PublicationOut.of(p) for p in await list_publications(runtime.store, build_id)]
