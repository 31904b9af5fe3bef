"""Composition root: settings -> store -> services -> loops. Nothing else builds these."""

from __future__ import annotations

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
from conveyor.controller.builds import BuildService
from conveyor.controller.clock import Clock, utcnow
from conveyor.controller.dispatcher import Dispatcher
from conveyor.controller.failures import FailureAnalyzer
from conveyor.controller.leader import LeaderLease
from conveyor.controller.loops import LoopRunner
from conveyor.controller.membership import HEARTBEAT_SECONDS, ClusterMembership
from conveyor.controller.notifications import Notifier
from conveyor.controller.pg_wakeups import PgWakeups
from conveyor.controller.reaper import Reaper
from conveyor.controller.retention import RETENTION_INTERVAL, ArtifactRetention
from conveyor.controller.wakeups import DISPATCH, Wakeups
from conveyor.metrics import Metrics, MetricsUpdater
from conveyor.settings import Settings
from conveyor.store import Store, open_store
from conveyor.store.migrate import upgrade

log = structlog.get_logger(__name__)

ADMIN_TOKEN_FILE = "admin-token"


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
    loops: list[LoopRunner] = field(default_factory=list)
    first_admin_token: str | None = None

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
        failures = FailureAnalyzer.load(settings.failure_patterns_file)
        notifier = Notifier.from_settings(settings, store, clock)
        builds = BuildService(store, blobs, wakeups, clock, metrics, failures, notifier)
        address = settings.public_url or f"http://{settings.host}:{settings.port}"
        membership = ClusterMembership(store, controller_id, address, settings.role, clock)
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
        )

    async def prepare(self) -> None:
        """Migrate the schema and make sure an admin token exists."""
        await upgrade(self.store.write_engine)
        if await self.store.count_tokens() == 0:
            token = new_token()
            await self.store.create_token("admin", hash_token(token), "admin", self.clock())
            self.first_admin_token = token
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
        backups = BackupScheduler(self.settings, self.store, self.lease, self.clock, self.metrics)
        self.loops = [
            LoopRunner("leader", self.lease.run_once, self.lease.next_attempt_in),
            LoopRunner("membership", self.membership.run_once, HEARTBEAT_SECONDS),
            LoopRunner("dispatcher", self.dispatcher.run_once, 1.0, self.wakeups, DISPATCH),
            LoopRunner("retention", retention.run_once, RETENTION_INTERVAL),
            LoopRunner("reaper", self.reaper.run_once, min(5.0, self.settings.agent_timeout / 3)),
            LoopRunner("metrics", self.metrics_updater.run_once, MetricsUpdater.INTERVAL),
            LoopRunner("backups", backups.run_once, SCHEDULER_INTERVAL),
        ]
        for loop in self.loops:
            loop.start()

    async def stop(self) -> None:
        for loop in self.loops:
            await loop.stop()
        await self.builds.drain()
        await self.notifier.close()
        try:
            await self.lease.release()
        except Exception:  # the store may be gone; the lease then simply expires
            log.warning("leader.release_failed")
        await self.wakeups.stop()
        await self.store.close()
        await self.blobs.close()
