"""Starting and ending builds: the decisions around the store's build rows.

Triggering plans the build from the job's spec (pure core code) and stores it
in one transaction; ending it compacts its log into the blob store and, when
the pipeline's retry policy allows, queues the retry as a new linked build.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from conveyor.blobs import BlobStore
from conveyor.controller.clock import Clock
from conveyor.controller.failures import FailureAnalyzer
from conveyor.controller.notifications import Notifier
from conveyor.controller.wakeups import DISPATCH, Wakeups, agent_channel, build_channel
from conveyor.core.pipeline import ParameterError, Pipeline, parse_pipeline, plan_build
from conveyor.core.plan import BuildPlan
from conveyor.core.states import BuildState, StepState
from conveyor.credentials.service import check_bindings
from conveyor.errors import Conflict, InvalidInput
from conveyor.metrics import Metrics
from conveyor.store import Store
from conveyor.store.records import BuildRecord, JobRecord, StepRecord
from conveyor.store.store import NewBuild, NewStep

if TYPE_CHECKING:
    from conveyor.controller.scm import ScmBuilds

log = structlog.get_logger(__name__)

#: Results after which a pipeline-level ``retry`` queues another attempt.
RETRYABLE = frozenset({BuildState.FAILED, BuildState.TIMED_OUT, BuildState.LOST})
#: Parsed pipelines kept by the trigger (one per job version).
PIPELINE_CACHE_SIZE = 512


def log_blob_key(build_id: int) -> str:
    # A key of its own per compaction: two racing compactions (the finishing
    # controller's and the leader's catch-up) never overwrite each other's blob.
    return f"logs/{build_id // 1000:06d}/{build_id}-{uuid.uuid4().hex[:12]}.log"


def plan_steps(plan: BuildPlan) -> list[NewStep]:
    return [
        NewStep(key=s.key, stage=s.stage, name=s.name, kind=s.kind, skipped=skipped)
        for s, skipped in plan.iter_steps()
    ]


def new_step_records(steps: list[NewStep]) -> list[StepRecord]:
    """The step rows ``Store.create_build`` writes for ``steps``, as ``build_steps``
    reads them back (the trigger's answer, without reading them back)."""
    return [
        StepRecord(
            key=s.key,
            position=i,
            stage=s.stage,
            name=s.name,
            kind=s.kind,
            state=StepState.SKIPPED if s.skipped else StepState.PENDING,
            exit_code=None,
            attempt=0,
            started_at=None,
            finished_at=None,
        )
        for i, s in enumerate(steps)
    ]


class BuildService:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        wakeups: Wakeups,
        clock: Clock,
        metrics: Metrics | None = None,
        failures: FailureAnalyzer | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.failures = failures
        self.notifier = notifier
        self.blobs = blobs
        self.wakeups = wakeups
        self.clock = clock
        self._background: set[asyncio.Task[None]] = set()
        #: Log bytes per build when the job sets no log_limit (settings.log_limit_mb).
        self.default_log_limit: int | None = None
        # Jobs with a repository are planned by ScmBuilds (set by the runtime).
        self.scm: ScmBuilds | None = None
        # (job name, version) -> (spec, parsed pipeline); the spec is compared too,
        # since a job deleted and created again starts at version 1 again.
        self._pipelines: dict[tuple[str, int], tuple[str, Pipeline]] = {}

    def _pipeline(self, job: JobRecord) -> Pipeline:
        """The job's parsed pipeline, parsed once per (job, version, spec): the YAML parse
        and validation were a tenth of a trivial build's controller time."""
        key = (job.name, job.version)
        cached = self._pipelines.get(key)
        if cached is not None and cached[0] == job.spec:
            return cached[1]
        pipeline = parse_pipeline(job.spec, f"{job.name}.yml")
        if len(self._pipelines) >= PIPELINE_CACHE_SIZE:
            self._pipelines.pop(next(iter(self._pipelines)))  # the oldest entry
        self._pipelines[key] = (job.spec, pipeline)
        return pipeline

    async def trigger(
        self,
        job_name: str,
        parameters: Mapping[str, str | bool | int | None],
        trigger: str,
        priority: int | None = None,
    ) -> BuildRecord:
        build, _ = await self.trigger_with_steps(job_name, parameters, trigger, priority)
        return build

    async def trigger_with_steps(
        self,
        job_name: str,
        parameters: Mapping[str, str | bool | int | None],
        trigger: str,
        priority: int | None = None,
    ) -> tuple[BuildRecord, list[StepRecord] | None]:
        """Queue a build; with the steps it was stored with, as the store would list
        them (None for a job with a repository: ask the store)."""
        job = await self.store.get_job(job_name)
        if job.disabled:
            raise Conflict(f"job {job.name!r} is disabled: enable it to start builds")
        pipeline = self._pipeline(job)
        if pipeline.scm is not None and self.scm is not None:
            build = await self.scm.trigger(job, pipeline, parameters, trigger, priority)
            return build, None
        try:
            plan = plan_build(pipeline, parameters)
        except ParameterError as exc:
            raise InvalidInput(str(exc), errors=list(exc.errors)) from exc
        # Unknown credential ids are refused now (400 naming them), not at run time.
        await check_bindings(self.store, (c for s, _ in plan.iter_steps() for c in s.credentials))
        if plan.log_limit is None and self.default_log_limit is not None:
            plan.log_limit = self.default_log_limit
            plan.log_limit_source = "controller log_limit_mb"
        steps = plan_steps(plan)
        build = await self.store.create_build(
            NewBuild(
                job_name=job.name,
                parameters={k: v for k, v in plan.environment.items() if pipeline.parameter(k)},
                plan=plan.model_dump(mode="json"),
                steps=steps,
                priority=job.priority if priority is None else priority,
                label_expression=pipeline.agent,
                trigger=trigger,
                max_attempts=1 + (pipeline.retry or 0),
                lost_retries=pipeline.retry_lost,
                expected_spec_version=job.version,
            ),
            self.clock(),
        )
        if self.metrics is not None:
            self.metrics.job_seen(job.name)
        self.wakeups.notify(DISPATCH)
        log.info("build.queued", build_id=build.id, job=job.name, number=build.number)
        return build, new_step_records(steps)

    async def cancel(self, build_id: int, by: str) -> BuildRecord:
        build = await self.store.request_cancel(build_id, self.clock(), by)
        if build.agent_id is not None:
            self.wakeups.notify(agent_channel(build.agent_id))
        self.wakeups.notify(build_channel(build.id))
        return build

    async def on_finished(self, build: BuildRecord) -> None:
        """After a build ended (reported by its agent, or lost): count, retry, wake, compact."""
        if self.metrics is not None:
            self.metrics.build_finished(build)
        if build.state == BuildState.LOST and build.lost_retries > 0:
            # A lost agent says nothing about the code: this retry does not use up `retry`.
            await self._retry(build, lost_retries=build.lost_retries - 1, extra_attempt=1)
        elif build.state in RETRYABLE and build.attempt < build.max_attempts:
            await self._retry(build, lost_retries=build.lost_retries, extra_attempt=0)
        # The freed executor matters more than the log's final resting place:
        # wake the dispatcher first, compact off the answer's path (the reaper
        # compacts whatever a crash left behind).
        self.wakeups.notify(build_channel(build.id))
        self.wakeups.notify(DISPATCH)
        task = asyncio.create_task(self._after_finish(build.id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_finish(self, build_id: int) -> None:
        """Compact the log (which also classifies a failure), then notify: so that
        notifications carry the analysed cause."""
        try:
            await self.compact_log(build_id)
        except Exception as exc:  # retried by the reaper
            log.warning("log.compaction_failed", build_id=build_id, error=repr(exc))
        if self.notifier is not None:
            try:
                build = await self.store.get_build(build_id)
                await self.notifier.on_build_finished(build, None)
                # The pipeline's `notify` post steps run here, on the controller.
                await self.notifier.run_post_notify_steps(build)
            except Exception as exc:
                log.warning("build.notify_failed", build_id=build_id, error=repr(exc))

    async def drain(self) -> None:
        """Wait for background compactions (at shutdown)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=10)

    async def compact_log(self, build_id: int) -> None:
        build = await self.store.get_build(build_id)
        if build.log_blob is not None:
            return
        key = log_blob_key(build_id)
        # Streamed window by window: a 100 MB log never sits in the controller's memory.
        stored = await self.blobs.put_stream(key, self.store.iter_log_chunks(build_id))
        if stored.size < build.log_size and (await self.store.get_build(build_id)).log_blob:
            await self.blobs.delete(key)
            return  # compacted meanwhile by someone else: the chunks we missed are in it
        if not await self.store.mark_log_compacted(build_id, key, stored.size):
            await self.blobs.delete(key)  # another compaction won the race
            return
        if self.failures is not None:
            # The log is final now: classify a failure from its tail.
            analysis = await self.failures.analyse_quietly(self.store, self.blobs, build)
            if analysis is not None and self.metrics is not None:
                self.metrics.build_failure(analysis.category)
        self.wakeups.notify(build_channel(build_id))

    async def _retry(self, build: BuildRecord, lost_retries: int, extra_attempt: int) -> None:
        steps = plan_steps(BuildPlan.model_validate(build.plan))
        retry = await self.store.create_build(
            NewBuild(
                job_name=build.job_name,
                parameters=build.parameters,
                plan=build.plan,
                steps=steps,
                priority=build.priority,
                label_expression=build.label_expression,
                trigger=f"retry of build {build.id}",
                max_attempts=build.max_attempts + extra_attempt,
                lost_retries=lost_retries,
                attempt=build.attempt + 1,
                retry_of=build.id,
            ),
            self.clock(),
        )
        self.wakeups.notify(DISPATCH)
        log.info("build.retried", build_id=build.id, retry_id=retry.id, attempt=retry.attempt)
