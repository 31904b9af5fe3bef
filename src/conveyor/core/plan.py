"""The resolved plan of one build: what an agent runs, in which order.

A ``BuildPlan`` is what the controller computes from a job's pipeline spec and
a build's parameters (``conveyor.core.pipeline.plan_build``) and what it hands
to an agent. It is plain data (JSON on the wire); the agent interprets it.
Conditions (``when``) are already decided here: a stage whose condition did
not hold is kept with ``skipped=True`` so that UIs can show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

StepKind = Literal[
    "sh", "echo", "archive", "notify", "publish"
]  # notify: post only, run by the controller
PostCondition = Literal["always", "success", "failure", "cancelled"]


class CredentialBind(BaseModel):
    """A credential bound into a step: which one (by id) and where its value goes.
    Only ids and variable names: values are resolved when an agent starts the build."""

    id: str
    env: str | None = None  # the secret (text, file, ssh_key) in this variable
    username_env: str | None = None  # username_password: the username here
    password_env: str | None = None  # username_password: the password here
    file: str | None = None  # written to a 0600 temp file; its path in this variable


class StepPlan(BaseModel):
    """One step. ``key`` is unique within the build and stable for a plan."""

    key: str
    stage: str  # display path of the stage, e.g. "test/unit"; "post.failure" for post steps
    kind: StepKind
    name: str  # short display text, e.g. "sh: make test"
    script: str | None = None  # kind == "sh"
    message: str | None = None  # kind == "echo"; kind == "notify": its own message, if any
    notifier: str | None = None  # kind == "notify": the notifier's name
    paths: list[str] = Field(default_factory=list)  # kind == "archive": glob patterns
    publish: dict[str, Any] | None = None  # kind == "publish": the PublishSpec, as JSON
    timeout: float | None = None  # seconds, per attempt
    retry: int = 0  # extra attempts after a failure
    environment: dict[str, str] = Field(default_factory=dict)  # stage env, merged by planner
    # pipeline, stage, branch and step `credentials`, in that order (later ones win)
    credentials: list[CredentialBind] = Field(default_factory=list)


class StagePlan(BaseModel):
    key: str
    name: str  # display path, e.g. "test/unit"
    steps: list[StepPlan] = Field(default_factory=list)
    parallel: list[StagePlan] = Field(default_factory=list)  # run concurrently; steps empty
    timeout: float | None = None
    retry: int = 0
    skipped: bool = False
    skip_reason: str | None = None


class CheckoutPlan(BaseModel):
    """The commit an agent checks out into the workspace before the first stage
    (jobs with ``scm``; docs/scm.md). ``credential`` is an id, never a secret."""

    url: str
    commit: str
    branch: str | None = None
    credential: str | None = None
    author: str | None = None
    subject: str | None = None


class BuildPlan(BaseModel):
    stages: list[StagePlan] = Field(default_factory=list)
    post: dict[PostCondition, list[StepPlan]] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)  # pipeline env + parameters
    timeout: float | None = None  # whole build, seconds
    log_limit: int | None = None  # most log bytes (job's log_limit or the controller's)
    log_limit_source: str | None = None  # where log_limit came from, for the log line

    def credential_ids(self) -> list[str]:
        """Every credential id some step of this plan binds, sorted."""
        return sorted({c.id for step, _ in self.iter_steps() for c in step.credentials})

    checkout: CheckoutPlan | None = None  # jobs with a repository: the commit to build

    def iter_steps(self) -> Iterator[tuple[StepPlan, bool]]:
        """Every step, in display order, with whether it is skipped."""

        def walk(stage: StagePlan, skipped: bool) -> Iterator[tuple[StepPlan, bool]]:
            for step in stage.steps:
                yield step, skipped or stage.skipped
            for child in stage.parallel:
                yield from walk(child, skipped or stage.skipped)

        for stage in self.stages:
            yield from walk(stage, False)
        for condition in ("success", "failure", "cancelled", "always"):
            for step in self.post.get(condition, []):
                yield step, False
