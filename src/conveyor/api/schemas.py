"""Wire schemas of the REST API (pydantic); conversions from store records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from conveyor.store.records import (
    AgentRecord,
    ArtifactRecord,
    BuildRecord,
    JobRecord,
    StepRecord,
)


class JobIn(BaseModel):
    spec: str = Field(
        description="the pipeline spec (conveyor.yml) as YAML text", max_length=1_000_000
    )
    version: int | None = Field(
        default=None, description="the version you last read; a stale one gets 409"
    )


class JobOut(BaseModel):
    name: str
    version: int
    description: str | None
    agent: str | None
    concurrency: int | None
    priority: int
    created_at: datetime
    updated_at: datetime
    spec: str
    # Operational state, not part of the spec: a disabled job starts no builds.
    disabled: bool = False

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls(
            name=job.name,
            version=job.version,
            description=job.description,
            agent=job.label_expression,
            concurrency=job.concurrency,
            priority=job.priority,
            created_at=job.created_at,
            updated_at=job.updated_at,
            spec=job.spec,
            disabled=job.disabled,
        )


class BuildDeletedOut(BaseModel):
    id: int
    job: str
    number: int
    blobs_deleted: int


class JobVersionOut(BaseModel):
    version: int
    created_at: datetime
    author: str | None
    spec: str


class TriggerIn(BaseModel):
    parameters: dict[str, str | bool | int | None] = Field(default_factory=dict)
    priority: int | None = None


class StepOut(BaseModel):
    key: str
    stage: str
    name: str
    kind: str
    state: str
    exit_code: int | None
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, s: StepRecord) -> StepOut:
        return cls(
            key=s.key,
            stage=s.stage,
            name=s.name,
            kind=s.kind,
            state=s.state.value,
            exit_code=s.exit_code,
            attempt=s.attempt,
            started_at=s.started_at,
            finished_at=s.finished_at,
        )


class ArtifactOut(BaseModel):
    path: str
    size: int
    sha256: str
    content_type: str
    url: str

    @classmethod
    def of(cls, a: ArtifactRecord) -> ArtifactOut:
        return cls(
            path=a.path,
            size=a.size,
            sha256=a.sha256,
            content_type=a.content_type,
            url=f"/api/v1/builds/{a.build_id}/artifacts/{a.path}",
        )


class CommitOut(BaseModel):
    """The commit a build of a job with a repository built (docs/scm.md)."""

    repository: str
    branch: str | None
    sha: str
    author: str | None
    email: str | None
    message: str | None
    committed_at: str | None


class BuildOut(BaseModel):
    id: int
    job: str
    number: int
    state: str
    result: str | None
    priority: int
    parameters: dict[str, str]
    trigger: str
    attempt: int
    retry_of: int | None
    agent_id: int | None
    cause: str | None
    pinned: bool = Field(
        default=False, description="kept by artifact retention (POST .../pin, .../unpin)"
    )
    failure_category: str | None = Field(
        default=None,
        description="why a failed build failed (failure analysis), e.g. compile, test, "
        "out_of_memory, timeout, agent_lost; null until analysed",
    )
    cancel_requested: bool
    queued_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    log_size: int
    url: str
    steps: list[StepOut] | None = None
    artifacts: list[ArtifactOut] | None = None
    commit: CommitOut | None = None  # jobs with a repository: what was built

    @classmethod
    def of(
        cls,
        b: BuildRecord,
        steps: list[StepRecord] | None = None,
        artifacts: list[ArtifactRecord] | None = None,
    ) -> BuildOut:
        duration = None
        if b.started_at is not None and b.finished_at is not None:
            duration = (b.finished_at - b.started_at).total_seconds()
        return cls(
            id=b.id,
            job=b.job_name,
            number=b.number,
            state=b.state.value,
            result=b.state.value if b.state.finished else None,
            priority=b.priority,
            parameters=b.parameters,
            trigger=b.trigger,
            attempt=b.attempt,
            retry_of=b.retry_of,
            agent_id=b.agent_id,
            cause=b.cause,
            failure_category=b.failure_category,
            pinned=b.pinned,
            cancel_requested=b.cancel_requested,
            queued_at=b.queued_at,
            assigned_at=b.assigned_at,
            started_at=b.started_at,
            finished_at=b.finished_at,
            duration_seconds=duration,
            log_size=b.log_size,
            url=f"/api/v1/builds/{b.id}",
            steps=None if steps is None else [StepOut.of(s) for s in steps],
            artifacts=None if artifacts is None else [ArtifactOut.of(a) for a in artifacts],
        )


class BuildPage(BaseModel):
    items: list[BuildOut]
    next_cursor: int | None


class QueueItemOut(BaseModel):
    build_id: int
    job: str
    priority: int
    queued_at: datetime
    waiting_seconds: float
    reason: str


class AgentOut(BaseModel):
    id: int
    name: str
    labels: list[str]
    executors: int
    busy: int
    state: str
    version: str
    registered_at: datetime
    last_seen_at: datetime
    cpu_percent: int | None
    memory_percent: int | None
    pool: str | None = None
    ephemeral: bool = False

    @classmethod
    def of(cls, a: AgentRecord) -> AgentOut:
        state = "offline" if not a.online else ("draining" if a.draining else "online")
        return cls(
            id=a.id,
            name=a.name,
            labels=a.labels,
            executors=a.executors,
            busy=a.busy,
            state=state,
            version=a.version,
            registered_at=a.registered_at,
            last_seen_at=a.last_seen_at,
            cpu_percent=a.cpu_percent,
            memory_percent=a.memory_percent,
            pool=a.pool,
            ephemeral=a.ephemeral,
        )


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
