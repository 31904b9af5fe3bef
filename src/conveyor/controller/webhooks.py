"""Handling one webhook delivery: verify, read the event, match jobs, start builds,
record the outcome (``webhook_deliveries``: accepted → which builds, ignored → why,
rejected → why).

Secrets: the controller's global ``webhook_secret`` setting and per-job secrets
(``PUT /api/v1/webhooks/secrets/JOB``). A job with a secret of its own is only
triggered by deliveries signed with it; other jobs by deliveries signed with the
global secret. A delivery no secret verifies is rejected (and recorded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from conveyor.controller.builds import BuildService
from conveyor.controller.clock import Clock
from conveyor.controller.scm import ScmBuilds
from conveyor.controller.triggers import (
    ensure_branch_job,
    ensure_sub_job,
    fire,
    parsed_pipeline,
    scm_claim_key,
)
from conveyor.core.scm import (
    branch_matches,
    normalize_repo_url,
    pr_job_name,
    sub_job_name,
    tag_job_name,
)
from conveyor.core.webhooks import EventError, ScmEvent, parse_event, verify
from conveyor.errors import ConveyorError
from conveyor.store import Store
from conveyor.store.scm import (
    JobMeta,
    all_job_meta,
    record_delivery,
    set_head,
    update_job_meta,
    webhook_secrets_of,
)

log = structlog.get_logger(__name__)

ACCEPTED, IGNORED, REJECTED = "accepted", "ignored", "rejected"


@dataclass
class DeliveryResult:
    id: int
    outcome: str
    reason: str | None
    builds: list[int] = field(default_factory=list)
    config_repo_changed: bool = False  # a push to the synced config repository


class WebhookService:
    def __init__(
        self,
        store: Store,
        builds: BuildService,
        scm: ScmBuilds,
        clock: Clock,
        global_secret: str | None,
        config_repo: str | None = None,
    ) -> None:
        self.store = store
        self.builds = builds
        self.scm = scm
        self.clock = clock
        self.global_secret = global_secret
        self.config_repo = normalize_repo_url(config_repo) if config_repo else None

    async def handle(
        self, provider: str, headers: Mapping[str, str], body: bytes
    ) -> DeliveryResult:
        now = self.clock()
        delivery_id = (
            headers.get("x-github-delivery")
            or headers.get("x-gitea-delivery")
            or headers.get("x-gitlab-event-uuid")
            or headers.get("x-request-id")
        )
        event_name = (
            headers.get("x-github-event")
            or headers.get("x-gitea-event")
            or headers.get("x-gitlab-event")
        )

        async def done(
            outcome: str,
            reason: str | None,
            event: ScmEvent | None = None,
            builds: list[int] | None = None,
        ) -> DeliveryResult:
            delivery = await record_delivery(
                self.store,
                now,
                provider,
                outcome,
                reason,
                builds or [],
                event=event.name if event else event_name,
                delivery_id=delivery_id,
                repository=event.repo_urls[0] if event and event.repo_urls else None,
                ref=event.ref if event else None,
                sha=event.sha if event else None,
            )
            log.info(
                "webhook.delivery",
                provider=provider,
                outcome=outcome,
                reason=reason,
                builds=builds or [],
            )
            return DeliveryResult(delivery, outcome, reason, builds or [])

        job_secrets = await webhook_secrets_of(self.store)
        if not self.global_secret and not job_secrets:
            return await done(REJECTED, "no webhook secret is configured on this controller")
        signed_global = bool(self.global_secret) and verify(
            provider, headers, body, self.global_secret or ""
        )
        signed_jobs = {j for j, s in job_secrets.items() if verify(provider, headers, body, s)}
        if not signed_global and not signed_jobs:
            # Recorded with what it claims to be (unverified), to help whoever debugs it.
            return await done(
                REJECTED,
                "signature or token does not match any webhook secret",
                _claimed(provider, headers, body),
            )
        try:
            event = parse_event(provider, headers, json.loads(body or b"null"))
        except (EventError, ValueError) as exc:
            return await done(REJECTED, f"unreadable payload: {exc}")
        if event.kind == "ping":
            return await done(IGNORED, "ping", event)
        if event.kind == "other":
            return await done(IGNORED, f"event {event.name!r} starts no builds", event)

        def allowed(job: str) -> bool:
            return job in signed_jobs if job in job_secrets else signed_global

        builds, reasons = await self._start_builds(event, allowed, now)
        config = (
            self.config_repo is not None
            and signed_global
            and event.kind == "push"
            and (self.config_repo in {normalize_repo_url(u) for u in event.repo_urls})
        )
        if config:
            reasons.append("config repository changed: syncing")
        if builds or config:
            result = await done(ACCEPTED, "; ".join(reasons) or None, event, builds)
        else:
            result = await done(IGNORED, "; ".join(reasons) or _no_job(event), event)
        result.config_repo_changed = config
        return result

    async def _start_builds(
        self, event: ScmEvent, allowed: object, now: datetime
    ) -> tuple[list[int], list[str]]:
        urls = {normalize_repo_url(u) for u in event.repo_urls}
        metas = await all_job_meta(self.store)
        started: list[int] = []
        reasons: list[str] = []
        for record in await self.store.list_jobs(limit=100_000):
            pipeline = parsed_pipeline(record.name, record.spec)
            if pipeline is None:
                continue
            spec = pipeline.scm
            meta = metas.get(record.name)
            if spec is None or normalize_repo_url(spec.git) not in urls:
                continue
            if meta is not None and meta.parent is not None:
                continue  # branch jobs are reached through their multibranch parent
            if record.disabled:
                reasons.append(f"{record.name}: job is disabled")
                continue
            if pipeline.triggers is not None and not pipeline.triggers.webhook:
                reasons.append(f"{record.name}: webhooks are off for this job")
                continue
            if not allowed(record.name):  # type: ignore[operator]
                reasons.append(f"{record.name}: not signed with this job's own secret")
                continue
            if event.sha is None and not event.deleted:
                continue
            target, branch = record, event.branch
            child_job = None
            if event.kind == "tag":
                tag = event.tag or ""
                if not spec.tags or not branch_matches(spec.tags, tag):
                    continue
                if event.deleted:
                    reasons += await self._archive(metas, tag_job_name(record.name, tag), "tag")
                    continue
                child_job = await ensure_sub_job(self.store, record, "tag", tag, now)
                branch = tag
            elif event.kind == "pull_request":
                if not spec.pull_requests:
                    continue
                if event.pull_request is None:
                    reasons.append(f"{record.name}: the request has no number")
                    continue
                if event.deleted:
                    child = pr_job_name(record.name, event.pull_request)
                    reasons += await self._archive(metas, child, "pull request closed")
                    continue
                child_job = await ensure_sub_job(
                    self.store,
                    record,
                    "pr",
                    event.branch or "",
                    now,
                    change_id=event.pull_request,
                    change_target=event.target_branch,
                )
            elif spec.multibranch:
                assert spec.branches is not None
                if branch is None or not branch_matches(spec.branches, branch):
                    continue
                if event.deleted:
                    child = sub_job_name(record.name, branch)
                    reasons += await self._archive(metas, child, "branch deleted")
                    continue
                child_job = await ensure_branch_job(self.store, record, branch, now)
            elif branch != spec.default_branch or event.deleted:
                continue
            if child_job is not None:
                target, pipeline = child_job.record, child_job.pipeline
                if metas.get(target.name) is not None and metas[target.name].archived:
                    await update_job_meta(self.store, target.name, archived=False)
            elif event.kind != "push" or spec.multibranch:
                reasons.append(f"{record.name}: its sub-job's name is taken by another job")
                continue
            if event.sha is None or branch is None:
                continue
            if target.disabled:  # a branch job disabled on its own
                reasons.append(f"{target.name}: job is disabled")
                continue
            sha = event.sha
            label = f"{event.kind} webhook {branch}@{sha[:12]}"
            if event.kind == "pull_request":
                label = f"pull request #{event.pull_request} webhook {branch}@{sha[:12]}"
            try:
                build = await fire(
                    self.store,
                    scm_claim_key(target.name, branch, sha),
                    now,
                    lambda t=target, p=pipeline, b=branch, s=sha, lb=label: self.scm.trigger(
                        t, p, {}, lb, branch=b, sha=s
                    ),
                )
            except ConveyorError as exc:
                reasons.append(f"{target.name}: {exc}")
                continue
            # The last head seen: a pull request job rebuilds it when started by hand.
            await set_head(self.store, target.name, branch, sha, now)
            if build is None:
                reasons.append(f"{target.name}: {sha[:12]} was already built")
            else:
                started.append(build.id)
        return started, reasons

    async def _archive(self, metas: Mapping[str, JobMeta], child: str, why: str) -> list[str]:
        """Archive a sub-job whose branch, tag or pull request is gone (history kept)."""
        if child not in metas:
            return []
        await update_job_meta(self.store, child, archived=True)
        log.info("multibranch.archived", job=child, reason=why)
        return [f"{child}: {why}, job archived"]


def _no_job(event: ScmEvent) -> str:
    where = event.ref or "?"
    repos = ", ".join(event.repo_urls) or "no repository"
    return f"no job builds {where} of {repos}"


def _claimed(provider: str, headers: Mapping[str, str], body: bytes) -> ScmEvent | None:
    try:
        return parse_event(provider, headers, json.loads(body or b"null"))
    except (EventError, ValueError):
        return None
