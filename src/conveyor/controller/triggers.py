"""The leader's trigger loop: cron, SCM polling, multibranch discovery, upstream jobs.

Runs only on the controller holding the leader lease (``run_once`` does nothing
elsewhere), so triggers fire once per cluster. Every firing first inserts a claim row
(``conveyor.store.scm.trigger_claims``) with a key naming the firing:

* ``cron:JOB:2026-12-04T03:17:00+00:00`` (the scheduled minute, in UTC),
* ``scm:JOB:BRANCH:SHA`` (shared with webhooks: a commit builds once, however it
  was noticed),
* ``upstream:BUILD_ID:JOB``.

Only the claim's winner starts the build, so a new leader that re-examines the same
minute, commit or upstream build after a takeover starts nothing twice. A claim whose
build could not be created is released, so the next pass may try again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import structlog
import yaml
from sqlalchemy import delete, select

from conveyor import git
from conveyor.controller.builds import BuildService
from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.controller.scm import ScmBuilds
from conveyor.core.cron import CronError, parse_cron
from conveyor.core.pipeline import Pipeline, SpecError, parse_pipeline
from conveyor.core.scm import branch_matches, pr_job_name, sub_job_name, tag_job_name
from conveyor.core.states import BuildState
from conveyor.errors import Conflict, ConveyorError, InvalidInput
from conveyor.store import Store
from conveyor.store.records import BuildRecord, JobRecord
from conveyor.store.schema import jobs
from conveyor.store.scm import (
    JobMeta,
    all_job_meta,
    claim,
    get_heads,
    get_job_meta,
    prune_claims,
    record_poll,
    release_claim,
    set_claim_build,
    set_head,
    set_job_meta,
)
from conveyor.store.store import JobFields

log = structlog.get_logger(__name__)

#: How far back a new leader looks for cron firings and finished upstream builds.
LOOKBACK = timedelta(minutes=10)
#: Claims are kept this long (far beyond LOOKBACK; SCM heads also remember commits).
CLAIM_KEEP = timedelta(days=7)
CLAIM_PRUNE_EVERY = timedelta(hours=1)
_UPSTREAM_STATES = {
    "success": {BuildState.SUCCEEDED},
    "failure": {BuildState.FAILED, BuildState.TIMED_OUT},
    "always": {BuildState.SUCCEEDED, BuildState.FAILED, BuildState.TIMED_OUT, BuildState.CANCELLED},
}


@dataclass(frozen=True)
class _Job:
    record: JobRecord
    pipeline: Pipeline
    meta: JobMeta | None


async def fire(
    store: Store,
    key: str,
    now: datetime,
    start: Any,
) -> BuildRecord | None:
    """Claim ``key`` and, if this caller won it, start the build with ``start()``."""
    if not await claim(store, key, now):
        return None
    try:
        build: BuildRecord = await start()
    except InvalidInput:
        # The firing itself is wrong (an invalid pipeline at that commit, parameters the
        # job does not declare): trying it again would fail again. Keep the claim.
        raise
    except Exception:
        await release_claim(store, key)  # e.g. repository unreachable: the next pass retries
        raise
    await set_claim_build(store, key, build.id)
    return build


@lru_cache(maxsize=8192)
def parsed_pipeline(name: str, spec: str) -> Pipeline | None:
    """A job's parsed spec, cached by its text: the trigger loop and webhooks look at
    every job often, and specs change rarely. ``None`` for an invalid stored spec."""
    try:
        return parse_pipeline(spec, f"{name}.yml")
    except SpecError:
        return None


def scm_claim_key(job: str, branch: str, sha: str) -> str:
    return f"scm:{job}:{branch}:{sha}"


class TriggerLoop:
    def __init__(
        self,
        store: Store,
        builds: BuildService,
        scm: ScmBuilds,
        lease: LeaderLease,
        clock: Clock,
        poll_default: float,
    ) -> None:
        self.store = store
        self.builds = builds
        self.scm = scm
        self.lease = lease
        self.clock = clock
        self.poll_default = poll_default
        self._cron_since: datetime | None = None
        self._polled_at: dict[str, datetime] = {}
        self._pruned_at: datetime | None = None

    async def run_once(self) -> int:
        """One pass; returns how many builds it started (0 when not the leader)."""
        if not self.lease.is_leader:
            self._cron_since = None  # a future leadership looks back again
            return 0
        now = self.clock()
        since = self._cron_since or now - LOOKBACK
        started = 0
        jobs = await self._jobs()
        for job in jobs.values():
            try:
                started += await self._job_pass(job, jobs, since, now)
            except ConveyorError as exc:
                log.warning("trigger.failed", job=job.record.name, error=str(exc))
            except git.GitError as exc:
                log.warning("trigger.git_failed", job=job.record.name, error=str(exc))
        self._cron_since = now
        if self._pruned_at is None or now - self._pruned_at > CLAIM_PRUNE_EVERY:
            await prune_claims(self.store, now - CLAIM_KEEP)
            self._pruned_at = now
        return started

    async def _jobs(self) -> dict[str, _Job]:
        metas = await all_job_meta(self.store)
        out: dict[str, _Job] = {}
        for record in await self.store.list_jobs(limit=100_000):
            pipeline = parsed_pipeline(record.name, record.spec)
            if pipeline is not None:
                out[record.name] = _Job(record, pipeline, metas.get(record.name))
        return out

    async def _job_pass(
        self, job: _Job, jobs: dict[str, _Job], since: datetime, now: datetime
    ) -> int:
        if job.meta is not None and job.meta.archived:
            return 0
        if job.record.disabled:
            return 0  # a disabled job starts nothing (its branch jobs neither)
        started = 0
        triggers = job.pipeline.triggers
        if triggers is not None and triggers.cron is not None:
            started += await self._cron(job, since, now)
        if triggers is not None and triggers.upstream:
            started += await self._upstream(job, jobs, now)
        if job.pipeline.scm is not None and (job.meta is None or job.meta.parent is None):
            started += await self._poll(job, jobs, now)
        return started

    # ------------------------------------------------------------------ cron

    async def _cron(self, job: _Job, since: datetime, now: datetime) -> int:
        triggers = job.pipeline.triggers
        assert triggers is not None and triggers.cron is not None
        try:
            schedule = parse_cron(triggers.cron, job.record.name, triggers.timezone or "UTC")
        except CronError:
            return 0
        # Never make up firings from before the job existed.
        fired = schedule.fires_between(max(since, job.record.created_at), now)
        if fired is None:
            return 0
        name = job.record.name
        build = await fire(
            self.store,
            f"cron:{name}:{fired.isoformat()}",
            now,
            lambda: self.builds.trigger(name, {}, f"cron {triggers.cron} ({fired.isoformat()})"),
        )
        return int(build is not None)

    # -------------------------------------------------------------- upstream

    async def _upstream(self, job: _Job, jobs: dict[str, _Job], now: datetime) -> int:
        triggers = job.pipeline.triggers
        assert triggers is not None
        started = 0
        name = job.record.name
        for rule in triggers.upstream:
            if rule.job not in jobs:
                continue
            wanted = _UPSTREAM_STATES[rule.on]
            for upstream in await self.store.list_builds(
                job_name=rule.job, states=tuple(wanted), limit=20
            ):
                if upstream.finished_at is None or upstream.finished_at < now - LOOKBACK:
                    continue
                if upstream.finished_at < job.record.updated_at:
                    continue  # finished before this trigger was configured
                params = dict(rule.parameters)
                label = f"upstream {rule.job} #{upstream.number} ({upstream.state.value})"
                build = await fire(
                    self.store,
                    f"upstream:{upstream.id}:{name}",
                    now,
                    lambda params=params, label=label: self.builds.trigger(name, params, label),
                )
                started += int(build is not None)
        return started

    # ----------------------------------------------------------- SCM polling

    async def _poll(self, job: _Job, jobs: dict[str, _Job], now: datetime) -> int:
        spec = job.pipeline.scm
        assert spec is not None
        triggers = job.pipeline.triggers
        interval = triggers.poll_seconds(self.poll_default) if triggers is not None else None
        if interval is None and spec.multibranch:
            interval = self.poll_default  # branch discovery runs even without polling
        if interval is None:
            return 0
        name = job.record.name
        last = self._polled_at.get(name)
        if last is not None and (now - last).total_seconds() < interval:
            return 0
        self._polled_at[name] = now
        try:
            refs = await self.scm.ls_remote(spec)
        except (git.GitError, ConveyorError) as exc:
            # Recorded where any controller can show it (GET /api/v1/jobs/NAME/scm-poll).
            await record_poll(self.store, name, now, str(exc))
            raise
        await record_poll(self.store, name, now, None)
        branches = git.branches_of(refs)
        if spec.multibranch:
            return await self._multibranch(
                job, jobs, branches, now, build_changes=bool(triggers and triggers.poll)
            )
        branch = job.meta.branch if job.meta and job.meta.branch else spec.default_branch
        sha = branches.get(branch)
        if sha is None:
            return 0
        return await self._build_if_new(job, branch, sha, now, baseline=True)

    async def _build_if_new(
        self, job: _Job, branch: str, sha: str, now: datetime, baseline: bool
    ) -> int:
        """Start one build of ``sha`` unless it was seen; the first sighting of a branch
        only records it when ``baseline`` (a job's existing commit is not news)."""
        name = job.record.name
        if job.record.disabled:
            return 0  # a disabled branch job: its head is read again once enabled
        heads = await get_heads(self.store, name)
        if heads.get(branch) == sha:
            return 0
        if baseline and branch not in heads:
            await set_head(self.store, name, branch, sha, now)
            return 0
        build = await fire(
            self.store,
            scm_claim_key(name, branch, sha),
            now,
            lambda: self.scm.trigger(
                job.record,
                job.pipeline,
                {},
                f"scm change {branch}@{sha[:12]}",
                branch=branch,
                sha=sha,
            ),
        )
        await set_head(self.store, name, branch, sha, now)
        return int(build is not None)

    # ------------------------------------------------------------ multibranch

    async def _multibranch(
        self,
        job: _Job,
        jobs: dict[str, _Job],
        branches: dict[str, str],
        now: datetime,
        build_changes: bool,
    ) -> int:
        spec = job.pipeline.scm
        assert spec is not None and spec.branches is not None
        parent = job.record.name
        matching = {b: s for b, s in branches.items() if branch_matches(spec.branches, b)}
        started = 0
        children = {  # pull request and tag jobs come and go with webhooks, not here
            j.meta.branch: j
            for j in jobs.values()
            if j.meta is not None and j.meta.parent == parent and j.meta.sub_kind == "branch"
        }
        for branch, sha in sorted(matching.items()):
            child = children.get(branch)
            if child is None:
                child = await ensure_branch_job(self.store, job.record, branch, now)
                if child is None:
                    continue
                # A new branch is news: build it at once.
                started += await self._build_if_new(child, branch, sha, now, baseline=False)
                continue
            if child.meta is not None and child.meta.archived:
                await self._set_archived(child.record.name, False)
            await sync_branch_job(self.store, job.record, child.record, branch, now)
            if build_changes:
                started += await self._build_if_new(child, branch, sha, now, baseline=False)
        for gone, child in children.items():
            if gone not in matching and child.meta is not None and not child.meta.archived:
                await self._set_archived(child.record.name, True)
                log.info("multibranch.archived", job=child.record.name, branch=gone)
        return started

    async def _set_archived(self, name: str, archived: bool) -> None:
        from conveyor.store.scm import update_job_meta

        await update_job_meta(self.store, name, archived=archived)


def branch_job_spec(parent_spec: str, name: str, branch: str) -> str:
    """The spec of a multibranch parent's branch job: the same pipeline, its own name,
    ``scm.branch`` instead of ``scm.branches``."""
    data = yaml.safe_load(parent_spec)
    data["name"] = name
    scm = dict(data["scm"])
    scm.pop("branches", None)
    scm["branch"] = branch
    data["scm"] = scm
    return yaml.safe_dump(data, sort_keys=False)


def change_job_spec(parent_spec: str, name: str) -> str:
    """The spec of a pull request or tag job: the parent's pipeline under its own name,
    building only what webhooks announce (the commit comes from the event), so without
    branch patterns, tag or request options, and without triggers of its own."""
    data = yaml.safe_load(parent_spec)
    data["name"] = name
    scm = dict(data["scm"])
    for key in ("branch", "branches", "tags", "pull_requests"):
        scm.pop(key, None)
    data["scm"] = scm
    data.pop("triggers", None)
    return yaml.safe_dump(data, sort_keys=False)


def _fields(spec: str, name: str) -> tuple[Pipeline, JobFields]:
    pipeline = parse_pipeline(spec, f"{name}.yml")
    return pipeline, JobFields(
        name=name,
        spec=spec,
        description=pipeline.description,
        label_expression=pipeline.agent,
        concurrency=pipeline.concurrency,
        priority=pipeline.priority or 0,
    )


async def sync_branch_job(
    store: Store, parent: JobRecord, child: JobRecord, branch: str, now: datetime
) -> None:
    """Carry a change of the multibranch job's spec over to a branch job."""
    spec = branch_job_spec(parent.spec, child.name, branch)
    if spec == child.spec:
        return
    _, fields = _fields(spec, child.name)
    await store.update_job(fields, None, f"multibranch {parent.name}", now)


async def ensure_branch_job(
    store: Store, parent: JobRecord, branch: str, now: datetime
) -> _Job | None:
    """Create the branch job ``parent/branch`` (with its meta row) if missing."""
    return await ensure_sub_job(store, parent, "branch", branch, now)


async def ensure_sub_job(
    store: Store,
    parent: JobRecord,
    kind: str,
    ref: str,
    now: datetime,
    change_id: int | None = None,
    change_target: str | None = None,
) -> _Job | None:
    """Create (or bring up to date) the sub-job of ``parent`` for a branch
    (``parent/feature-x``), a pull request (``parent/PR-12``, ``ref`` its source branch)
    or a tag (``parent/tag-v1.2``). ``None`` when that name is taken by another job, or
    when the parent was deleted meanwhile (no orphan is left behind)."""
    if kind == "pr":
        assert change_id is not None
        name = pr_job_name(parent.name, change_id)
        spec = change_job_spec(parent.spec, name)
    elif kind == "tag":
        name = tag_job_name(parent.name, ref)
        spec = change_job_spec(parent.spec, name)
    else:
        name = sub_job_name(parent.name, ref)
        spec = branch_job_spec(parent.spec, name, ref)
    pipeline, fields = _fields(spec, name)
    author = f"multibranch {parent.name}"
    created = True
    try:
        record = await store.create_job(fields, author, now)
    except Conflict:
        created = False
        record = await store.get_job(name)
        meta = await get_job_meta(store, name)
        # Made by an earlier pass that stopped before its meta row: ours to adopt.
        adopt = meta is None and record.spec == spec
        if not adopt and (meta is None or meta.parent != parent.name or meta.sub_kind != kind):
            log.warning("multibranch.name_taken", job=name, parent=parent.name, kind=kind)
            return None
        if kind != "branch" and record.spec != spec:  # the parent's pipeline changed
            record = await store.update_job(fields, None, author, now)
    values: dict[str, Any] = {"parent": parent.name, "branch": ref, "kind": kind}
    if kind == "pr":
        values.update(change_id=str(change_id), change_target=change_target)
    async with store.write() as conn:
        if await conn.scalar(select(jobs.c.id).where(jobs.c.id == parent.id)) is None:
            # The parent was deleted while this job was made: do not leave an orphan.
            if created:
                await conn.execute(delete(jobs).where(jobs.c.id == record.id))
            return None
        await set_job_meta(conn, record.id, **values)
    meta = JobMeta(
        name,
        None,
        None,
        None,
        parent.name,
        ref,
        False,
        kind,
        values.get("change_id"),
        change_target,
    )
    log.info("multibranch.created", job=name, kind=kind, ref=ref)
    return _Job(record, pipeline, meta)
