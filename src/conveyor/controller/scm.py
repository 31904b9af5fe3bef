"""Builds of jobs with a repository: resolve the commit, read the pipeline from the
repository when the job keeps it there, plan, and record what was built.

The controller keeps its own bare mirror cache (``HOME/mirrors``) to resolve a branch
to its commit and read the commit's author, message and pipeline file; the agent then
checks out that exact commit from its own mirror (``conveyor.agent.checkout``). So a
build always builds the commit it names, even if the branch moves while it is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from conveyor import git
from conveyor.controller.clock import Clock
from conveyor.controller.wakeups import DISPATCH, Wakeups
from conveyor.core.jenkinsfile import NotTranslated, is_jenkinsfile_path, pipeline_from_jenkinsfile
from conveyor.core.pipeline import ParameterError, Pipeline, SpecError, parse_pipeline, plan_build
from conveyor.core.plan import CheckoutPlan
from conveyor.core.scm import ScmSpec
from conveyor.errors import Conflict, ConveyorError, InvalidInput
from conveyor.store import Store
from conveyor.store.records import BuildRecord, JobRecord
from conveyor.store.scm import BuildCommit, get_job_meta, record_build_commit
from conveyor.store.store import NewBuild

log = structlog.get_logger(__name__)


class RepositoryUnavailable(ConveyorError):
    """The job's repository could not be fetched (or the commit/file is missing)."""

    status = 502
    title = "Repository unavailable"


class ScmBuilds:
    def __init__(self, store: Store, wakeups: Wakeups, clock: Clock, mirror_root: Path) -> None:
        self.store = store
        self.wakeups = wakeups
        self.clock = clock
        self.mirror_root = mirror_root

    async def fetch(self, spec: ScmSpec) -> Path:
        try:
            return await git.mirror(self.mirror_root, spec.git, spec.credential)
        except git.GitError as exc:
            raise RepositoryUnavailable(f"{spec.git}: {exc}") from None

    async def trigger(
        self,
        job: JobRecord,
        pipeline: Pipeline,
        parameters: Mapping[str, str | bool | int | None],
        trigger: str,
        priority: int | None = None,
        branch: str | None = None,
        sha: str | None = None,
    ) -> BuildRecord:
        """Queue a build of ``sha`` (default: the branch's current commit)."""
        from conveyor.controller.builds import plan_steps

        spec = pipeline.scm
        assert spec is not None
        meta = await get_job_meta(self.store, job.name)
        if meta is not None and meta.archived:
            raise Conflict(f"job {job.name!r} is archived (its branch was deleted)")
        if branch is None:
            branch = meta.branch if meta is not None and meta.branch else None
        if branch is None:
            if spec.multibranch:
                raise InvalidInput(
                    f"job {job.name!r} builds the branches matching {spec.branches!r}: "
                    f"start a build of one of its branch jobs ({job.name}/BRANCH)"
                )
            branch = spec.default_branch
        mirror = await self.fetch(spec)
        try:
            sha = await git.resolve(mirror, sha or f"refs/heads/{branch}")
            info = await git.commit_info(mirror, sha)
        except git.GitError as exc:
            raise RepositoryUnavailable(f"{spec.git}: branch {branch!r}: {exc}") from None
        source = pipeline
        if pipeline.from_scm:
            try:
                text = await git.read_file(mirror, sha, spec.path)
            except git.GitError as exc:
                raise RepositoryUnavailable(str(exc)) from None
            if is_jenkinsfile_path(spec.path):
                # A Jenkinsfile (a job moved from Jenkins): translated by the importer;
                # one it cannot translate completely is refused with its report.
                try:
                    text = pipeline_from_jenkinsfile(text, job.name, f"{spec.path}@{sha[:12]}")
                except NotTranslated as exc:
                    raise InvalidInput(
                        f"the Jenkinsfile in {spec.git} at {sha[:12]} does not translate",
                        errors=exc.errors,
                    ) from None
            try:
                source = parse_pipeline(text, f"{spec.path}@{sha[:12]}")
            except SpecError as exc:
                raise InvalidInput(
                    f"the pipeline in {spec.git} at {sha[:12]} is invalid",
                    errors=[str(e) for e in exc.errors],
                ) from None
        try:
            plan = plan_build(source, parameters)
        except ParameterError as exc:
            raise InvalidInput(str(exc), errors=list(exc.errors)) from exc
        plan.checkout = CheckoutPlan(
            url=spec.git,
            commit=sha,
            branch=branch,
            credential=spec.credential,
            author=info.author,
            subject=info.subject,
        )
        # Jenkins' names, for scripts that already read them.
        plan.environment.update(GIT_COMMIT=sha, GIT_BRANCH=branch, GIT_URL=spec.git)
        build = await self.store.create_build(
            NewBuild(
                job_name=job.name,
                parameters={k: v for k, v in plan.environment.items() if source.parameter(k)},
                plan=plan.model_dump(mode="json"),
                steps=plan_steps(plan),
                priority=job.priority if priority is None else priority,
                label_expression=source.agent or pipeline.agent,
                trigger=trigger,
                max_attempts=1 + (source.retry or 0),
                lost_retries=source.retry_lost,
                expected_spec_version=job.version,
            ),
            self.clock(),
        )
        await record_build_commit(
            self.store,
            BuildCommit(
                build_id=build.id,
                repository=spec.git,
                branch=branch,
                sha=sha,
                author=info.author,
                email=info.email,
                message=info.message,
                committed_at=info.committed_at,
            ),
        )
        self.wakeups.notify(DISPATCH)
        log.info("build.queued", build_id=build.id, job=job.name, commit=sha[:12], branch=branch)
        return build
