"""Typed rows that the store hands out. Never loose dicts past the store boundary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.core.states import BuildState, StepState


@dataclass(frozen=True)
class JobRecord:
    id: int
    name: str
    version: int
    spec: str
    description: str | None
    label_expression: str | None
    concurrency: int | None
    priority: int
    created_at: datetime
    updated_at: datetime
    disabled: bool = False


@dataclass(frozen=True)
class JobVersionRecord:
    version: int
    spec: str
    created_at: datetime
    author: str | None


@dataclass(frozen=True)
class BuildRecord:
    id: int
    job_id: int
    job_name: str
    number: int
    state: BuildState
    priority: int
    label_expression: str | None
    parameters: dict[str, str]
    plan: dict[str, Any]
    spec_version: int
    trigger: str
    attempt: int
    max_attempts: int
    lost_retries: int
    retry_of: int | None
    queued_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    agent_id: int | None
    assignment_id: str | None
    cancel_requested: bool
    cause: str | None
    log_size: int
    log_blob: str | None
    failure_category: str | None = None
    pinned: bool = False


@dataclass(frozen=True)
class StepRecord:
    key: str
    position: int
    stage: str
    name: str
    kind: str
    state: StepState
    exit_code: int | None
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AgentRecord:
    id: int
    name: str
    labels: list[str]
    executors: int
    version: str
    draining: bool
    registered_at: datetime
    last_seen_at: datetime
    online: bool
    cpu_percent: int | None
    memory_percent: int | None
    busy: int
    pool: str | None = None
    ephemeral: bool = False


@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    build_id: int
    path: str
    size: int
    sha256: str
    content_type: str
    blob_key: str
    created_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class InboxItem:
    """What a polling agent is told: builds newly assigned to it, builds to cancel."""

    assignment_id: str
    build_id: int
    cancel: bool


@dataclass(frozen=True)
class ControllerRecord:
    id: str
    address: str
    version: str
    role: str
    started_at: datetime
    heartbeat_at: datetime
