"""Composition root: settings -> store -> services -> loops. Nothing else builds these."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from conveyor.backup.schedule import SCHEDULER_INTERVAL, BackupScheduler
from conveyor.blobs import BlobStore, FolderBlobStore, open_blob_store
from conveyor.controller.autoscaler import Autoscaler, request_latency
from conveyor.controller.builds import BuildService
from conveyor.controller.clock import Clock, utcnow
from conveyor.controller.config_apply import ConfigApplier, apply_env
from conveyor.controller.config_sync import ConfigSync
from conveyor.controller.dispatcher import Dispatcher
from conveyor.controller.failures import FailureAnalyzer
from conveyor.controller.history import HistoryRetention, JobPolicyCache
from conveyor.controller.leader import LeaderLease
from conveyor.controller.loops import LoopRunner
from conveyor.controller.membership import HEARTBEAT_SECONDS, ClusterMembership
from conveyor.controller.notifications import Notifier
from conveyor.controller.pg_wakeups import PgWakeups
from conveyor.controller.reaper import Reaper
from conveyor.controller.retention import RETENTION_INTERVAL, ArtifactRetention
from conveyor.controller.scm import ScmBuilds
from conveyor.controller.triggers import TriggerLoop
from conveyor.controller.wakeups import DISPATCH, Wakeups
from conveyor.credentials.service import CredentialVault, load_secret_key
from conveyor.looplag import LoopWatch
from conveyor.metrics import Metrics, MetricsUpdater
from conveyor.security.bootstrap import ensure_first_admin
from conveyor.settings import Settings
from conveyor.store import Store, open_store
from conveyor.store.migrate import upgrade
from conveyor.store.pools import ScalingDecisionRecord

log = structlog.get_logger(__name__)

ADMIN_TOKEN_FILE = "admin-token"
#: Seconds the dispatcher lets wake-ups gather after the first one: the triggers and
#: finishes of a burst make one pass instead of one each (costs this much latency).
DISPATCH_SETTLE = 0.002


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str = "cvy") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass
class Runtime:
    settings: Settings
    store: Store
    blobs: BlobStore
    wakeups: Wakeups
    clock: Clock
    controller_id: str
    lease: LeaderLease
    builds: BuildService
    dispatcher: Dispatcher
    reaper: Reaper
    membership: ClusterMembership
    notifier: Notifier
    metrics: Metrics
    metrics_updater: MetricsUpdater
    scm: ScmBuilds | None = None
    triggers: TriggerLoop | None = None
    config_sync: ConfigSync | None = None
    loops: list[LoopRunner] = field(default_factory=list)
    #: The event-loop lag and GC pause sampler (conveyor.looplag), while loops run.
    loop_watch: asyncio.Task[None] | None = None
    first_admin_token: str | None = None
    credentials: CredentialVault | None = None  # the encrypted credentials store
    autoscaler: Autoscaler | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock = utcnow) -> Runtime:
        store = open_store(settings.resolved_database_url())
        blobs = (
            open_blob_store(settings.blob_url)
            if settings.blob_url
            else FolderBlobStore(settings.resolved_blob_dir())
        )
        wakeups: Wakeups = PgWakeups(store.url) if store.dialect == "postgresql" else Wakeups()
        controller_id = settings.controller_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        lease = LeaderLease(store, controller_id, settings.lease_ttl, clock)
        metrics = Metrics(controller_id)
        if settings.jenkins_metrics:  # Jenkins dashboards' metric names (docs/metrics.md)
            from conveyor.jenkins.metrics import install_jenkins_metrics

            install_jenkins_metrics(metrics)
        failures = FailureAnalyzer.load(settings.failure_patterns_file)
        notifier = Notifier.from_settings(settings, store, clock)
        builds = BuildService(store, blobs, wakeups, clock, metrics, failures, notifier)
        if settings.log_limit_mb is not None:
            builds.default_log_limit = settings.log_limit_mb * 1024 * 1024
        address = settings.public_url or f"http://{settings.host}:{settings.port}"
        membership = ClusterMembership(store, controller_id, address, settings.role, clock)
        vault = CredentialVault(store, load_secret_key(settings))
        scm = ScmBuilds(store, wakeups, clock, settings.home.resolve() / "mirrors", vault)
        builds.scm = scm
        return cls(
            settings=settings,
            store=store,
            blobs=blobs,
            wakeups=wakeups,
            clock=clock,
            controller_id=controller_id,
            lease=lease,
            builds=builds,
            dispatcher=Dispatcher(
                store, wakeups, lease, settings.dispatch_strategy, clock, metrics
            ),
            reaper=Reaper(store, builds, lease, settings.agent_timeout, clock, membership),
            membership=membership,
            notifier=notifier,
            metrics=metrics,
            metrics_updater=MetricsUpdater(metrics, store, lease, clock),
            credentials=vault,
            scm=scm,
            triggers=TriggerLoop(store, builds, scm, lease, clock, settings.scm_poll_interval),
            config_sync=ConfigSync(
                ConfigApplier(store, clock, apply_env(settings, notifier.config)),
                lease,
                settings.home.resolve() / "mirrors",
                settings.config_repo,
                settings.config_ref,
                settings.config_sync_interval,
                clock,
                settings.config_repo_credential,
                scm,
            ),
        )

    async def prepare(self) -> None:
        """Migrate the schema and make sure an admin token exists."""
        await upgrade(self.store.write_engine)
        # The first admin is a real user (conveyor.security.bootstrap); a token handed in
        # (CONVEYOR_ADMIN_TOKEN) becomes its token and is not printed to the log.
        token = await ensure_first_admin(self.store, self.clock(), self.settings.admin_token)
        if token is not None:
            if self.settings.admin_token is None:
                self.first_admin_token = token  # printed once by `conveyor server`/`up`
            self.write_admin_token(token)

    def write_admin_token(self, token: str) -> Path:
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True)
        path = home / ADMIN_TOKEN_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return path

    async def start_loops(self) -> None:
        await self.wakeups.start()
        await self.lease.run_once()
        retention = ArtifactRetention.from_settings(
            self.settings, self.store, self.blobs, self.lease, self.clock, self.metrics
        )
        retention.policies = JobPolicyCache(self.store, self.settings.retention_keep_released)
        history = HistoryRetention.from_settings(
            self.settings, self.store, self.blobs, self.lease, self.clock, self.metrics
        )
        backups = BackupScheduler(self.settings, self.store, self.lease, self.clock, self.metrics)
        self.loops = [
            LoopRunner("leader", self.lease.run_once, self.lease.next_attempt_in),
            LoopRunner("membership", self.membership.run_once, HEARTBEAT_SECONDS),
            LoopRunner(
                "dispatcher",
                self.dispatcher.run_once,
                1.0,
                self.wakeups,
                DISPATCH,
                settle=DISPATCH_SETTLE,
            ),
            LoopRunner("retention", retention.run_once, RETENTION_INTERVAL),
            LoopRunner("history-retention", history.run_once, RETENTION_INTERVAL),
            LoopRunner("reaper", self.reaper.run_once, min(5.0, self.settings.agent_timeout / 3)),
            LoopRunner("metrics", self.metrics_updater.run_once, MetricsUpdater.INTERVAL),
            LoopRunner(
                "autoscaler", self.make_autoscaler().run_once, self.settings.autoscale_interval
            ),
            LoopRunner("backups", backups.run_once, SCHEDULER_INTERVAL),
        ]
        if self.triggers is not None:
            self.loops.append(
                LoopRunner("triggers", self.triggers.run_once, self.settings.trigger_interval)
            )
        if self.config_sync is not None and self.settings.config_repo:
            self.loops.append(
                LoopRunner("config-sync", self.config_sync.run_once, self.settings.trigger_interval)
            )
        for loop in self.loops:
            loop.start()
        self.loop_watch = asyncio.create_task(LoopWatch(self.metrics).run(), name="loop-watch")

    async def _audit_scaling(self, decision: ScalingDecisionRecord) -> None:
        """Every stored scaling decision is in the audit log, with its reason."""
        from conveyor.security.audit import record_audit

        await record_audit(
            self.store,
            actor=f"autoscaler@{self.controller_id}",
            action="pool.scale",
            target=f"pool:{decision.pool}",
            outcome="success",
            source="controller",
            detail={
                "from": decision.current,
                "to": decision.target,
                "rule": decision.rule,
                "reason": decision.reason,
                "removed": decision.removed,
                "drained": decision.drained,
            },
        )

    def make_autoscaler(self) -> Autoscaler:
        """The autoscaler (leader only, like the reaper); kept for tests to step."""
        if self.autoscaler is None:
            settings = self.settings
            self.autoscaler = Autoscaler(
                self.store,
                self.lease,
                self.clock,
                controller_url=settings.public_url or f"http://{settings.host}:{settings.port}",
                home=settings.home,
                controller_id=self.controller_id,
                latency=request_latency(self.metrics),
                launch_timeout=settings.agent_launch_timeout,
                on_decision=self._audit_scaling,
                credentials=self.credentials,
            )
        return self.autoscaler

    async def stop(self) -> None:
        if self.loop_watch is not None:
            self.loop_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_watch
            self.loop_watch = None
        for loop in self.loops:
            await loop.stop()
        if self.autoscaler is not None:
            await self.autoscaler.close()  # local agents do not outlive their controller
        await self.builds.drain()
        await self.notifier.close()
        try:
            await self.lease.release()
        except Exception:  # the store may be gone; the lease then simply expires
            log.warning("leader.release_failed")
        await self.wakeups.stop()
        await self.store.close()
        await self.blobs.close()
