"""Build-history retention in the store (SQLite and PostgreSQL): the snapshot, deleting
a build whole (rows, log chunks, compacted log blob, artifacts, publications), per-job
policies from the specs; the leader loop with real blobs and a FakeClock; the preview."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.blobs import FolderBlobStore
from conveyor.controller.builds import BuildService
from conveyor.controller.history import HistoryRetention, JobPolicyCache, preview
from conveyor.controller.leader import LeaderLease
from conveyor.controller.retention import ArtifactRetention
from conveyor.controller.wakeups import Wakeups
from conveyor.core.retention import RetentionPolicy
from conveyor.core.states import BuildState
from conveyor.errors import NotFound
from conveyor.store import Store
from conveyor.store.history import delete_build, history_snapshot
from conveyor.store.publications import list_publications, record_publication
from conveyor.store.retention import set_pinned
from conveyor.store.schema import build_steps, log_chunks
from conveyor.store.store import Fence, FencedOut
from tests.conftest import FakeClock
from tests.store.test_contract import fields
from tests.store.test_retention_store import _agent, _build

DAY = 86400
SPEC_WITH = (
    "name: {name}\nretention: {retention}\nstages:\n  - name: b\n    steps:\n      - sh: x\n"
)


class Counter:
    """A prometheus-like counter: ``inc`` and ``labels(value).inc`` (sums per label)."""

    def __init__(self, parent: Counter | None = None, label: str = "") -> None:
        self.value = 0.0
        self.by: dict[str, float] = {}
        self._parent, self._label = parent, label

    def inc(self, amount: float = 1) -> None:
        self.value += amount
        if self._parent is not None:
            self._parent.by[self._label] = self._parent.by.get(self._label, 0.0) + amount

    def labels(self, what: str) -> Counter:
        return Counter(self, what)


class Metrics:
    def __init__(self) -> None:
        self.retention_builds_deleted_total = Counter()
        self.retention_history_freed_bytes_total = Counter()


async def _with_log(store: Store, build_id: int, data: bytes) -> None:
    aid = f"aid-{build_id}"
    build = await store.get_build(build_id)
    await store.append_log(aid, build.agent_id or 0, 0, 0, data)


async def _rows(store: Store, table: object, build_id: int) -> int:
    from sqlalchemy import func, select

    async with store.read() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(table).where(table.c.build_id == build_id)  # type: ignore[attr-defined]
            )
            or 0
        )


async def test_snapshot_includes_builds_without_artifacts_with_log_bytes(
    store: Store, clock: FakeClock
) -> None:
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    plain = await _build(store, clock, agent, None)
    await _with_log(store, plain, b"hello\n")
    await store.finish_build(f"aid-{plain}", agent, BuildState.SUCCEEDED, None, clock())
    with_files = await _build(store, clock, agent, BuildState.FAILED, {"a": 5})
    running = await _build(store, clock, agent, None)
    pinned = await _build(store, clock, agent)
    await set_pinned(store, pinned, True)

    snap = await history_snapshot(store, 100)
    assert [b.id for b in snap.builds] == [plain, with_files]
    first, second = snap.builds
    assert (first.log_bytes, first.artifact_bytes, first.artifact_count) == (6, 0, 0)
    assert (second.artifact_bytes, second.artifact_count) == (5, 1)
    assert first.newer == 2  # with_files and pinned are finished and newer
    assert snap.last_succeeded == {"app": pinned}
    assert running not in [b.id for b in snap.builds]
    assert [b.id for b in (await history_snapshot(store, 1, after=plain)).builds] == [with_files]


async def test_delete_build_removes_everything_and_is_conditional(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    build = await _build(store, clock, agent, None, {"d/a.txt": 3}, blobs=blobs)
    await _with_log(store, build, b"0123456789")
    await store.finish_build(f"aid-{build}", agent, BuildState.FAILED, None, clock())
    await BuildService(store, blobs, Wakeups(), clock).compact_log(build)
    log_blob = (await store.get_build(build)).log_blob
    assert log_blob is not None
    await record_publication(
        store,
        build,
        step_key="0.0",
        repository="http",
        file="a",
        url="http://r/a",
        size=1,
        sha256="0" * 64,
        coordinates=None,
        now=clock(),
    )
    running = await _build(store, clock, agent, None)
    pinned = await _build(store, clock, agent)
    await set_pinned(store, pinned, True)

    assert await delete_build(store, running) is None
    assert await delete_build(store, pinned) is None
    assert await delete_build(store, 999_999) is None
    assert await store.acquire_lease("leader", "c1", 5, clock()) == 1
    with pytest.raises(FencedOut):
        await delete_build(store, build, fence=Fence("leader", "c1", 9), now=clock())
    assert (await store.get_build(build)).id == build

    gone = await delete_build(store, build, fence=Fence("leader", "c1", 1), now=clock())
    assert gone is not None
    assert gone.artifact_keys == [f"artifacts/{build}/d/a.txt"]
    assert gone.log_blob == log_blob
    assert (gone.artifact_bytes, gone.log_bytes) == (3, 10)
    with pytest.raises(NotFound):
        await store.get_build(build)
    assert await _rows(store, build_steps, build) == 0
    assert await _rows(store, log_chunks, build) == 0
    assert await store.list_artifacts(build) == []
    with pytest.raises(NotFound):
        await list_publications(store, build)
    assert await delete_build(store, build) is None  # twice: nothing
    for kept in (running, pinned):
        assert (await store.get_build(kept)).id == kept


async def test_history_loop_with_per_job_policies(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())  # default policy only
    spec = SPEC_WITH.format(name="lib", retention="{builds: 2, artifacts: {builds: 1}}")
    await store.create_job(fields("lib", spec), None, clock())
    agent = await _agent(store, clock)
    app_old = await _build(store, clock, agent, BuildState.FAILED, {"a": 4}, blobs=blobs)
    lib = [
        await _build(store, clock, agent, BuildState.FAILED, {"x": 10}, "lib", blobs)
        for _ in range(4)
    ]
    lib_pinned = lib[0]
    await set_pinned(store, lib_pinned, True)
    for b in (app_old, *lib):
        await _with_log(store, b, b"log\n")
    clock.advance(5 * DAY)
    app_new = await _build(store, clock, agent, BuildState.SUCCEEDED)

    lease = LeaderLease(store, "c1", 5, clock)
    metrics = Metrics()
    policies = JobPolicyCache(store)
    history = HistoryRetention(
        store, blobs, lease, clock, RetentionPolicy(None, 3), policies, metrics
    )
    assert await history.run_once() == 0  # not the leader
    assert await lease.run_once()

    found = await preview(
        store, clock(), RetentionPolicy(None, 3), RetentionPolicy(None, None), policies
    )
    assert [(d.job, d.number) for d in found.builds] == [("app", 1), ("lib", 2)]
    assert [d.reason for d in found.builds] == ["older than 3 days", "beyond the last 2 builds"]
    # lib #4 keeps its artifacts (the last 1 build), #3 loses them (artifacts: {builds: 1}).
    assert [(p.job, p.number) for p in found.artifacts] == [("lib", 3)]
    assert found.bytes_freed == (4 + 4) + (10 + 4) + 10
    assert (await store.get_build(app_old)).id == app_old  # a preview deletes nothing

    freed = await history.run_once()
    assert freed == (4 + 4) + (10 + 4)
    assert metrics.retention_builds_deleted_total.value == 2
    assert metrics.retention_history_freed_bytes_total.by == {"artifacts": 14, "logs": 8}
    for gone, name in ((app_old, "a"), (lib[1], "x")):
        with pytest.raises(NotFound):
            await store.get_build(gone)
        assert not await blobs.exists(f"artifacts/{gone}/{name}")
    for kept in (lib_pinned, lib[2], lib[3], app_new):
        assert (await store.get_build(kept)).id == kept
    assert await history.run_once() == 0

    artifacts = ArtifactRetention(store, blobs, lease, clock, RetentionPolicy(None, None))
    artifacts.policies = policies
    assert await artifacts.run_once() == 10
    assert await store.list_artifacts(lib[2]) == []
    assert len(await store.list_artifacts(lib[3])) == 1
    assert len(await store.list_artifacts(lib_pinned)) == 1

    # A new spec version is read again: lib now keeps everything it has.
    spec = SPEC_WITH.format(name="lib", retention="{builds: 100}")
    await store.update_job(fields("lib", spec), 1, None, clock())
    clock.advance(30 * DAY)
    assert await history.run_once() == 0
    # app #2 is older than 3 days now, but the last succeeded build of its job stays.
    for kept in (lib_pinned, lib[2], lib[3], app_new):
        assert (await store.get_build(kept)).id == kept


async def test_history_loop_pages_with_a_cursor(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    ids = [await _build(store, clock, agent, BuildState.FAILED) for _ in range(9)]
    lease = LeaderLease(store, "c1", 5, clock)
    assert await lease.run_once()
    history = HistoryRetention(store, blobs, lease, clock, RetentionPolicy(2, None))
    history.PAGE, history.MAX_PAGES = 2, 2  # 4 builds a pass
    await history.run_once()
    await history.run_once()
    await history.run_once()
    remaining = [b.id for b in (await history_snapshot(store, 100)).builds]
    assert remaining == ids[-2:]


async def test_released_builds_are_kept_unless_told_otherwise(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    """A build a publish step published from is "released": neither policy deletes it
    (nor its artifacts) while keep_released holds (the default)."""
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    released = await _build(store, clock, agent, BuildState.FAILED, {"a": 3}, blobs=blobs)
    await record_publication(
        store,
        released,
        step_key="0.0",
        repository="pypi",
        file="dist/x.whl",
        url="http://index/",
        size=3,
        sha256="0" * 64,
        coordinates="x==1",
        now=clock(),
    )
    plain = await _build(store, clock, agent, BuildState.FAILED, {"a": 3}, blobs=blobs)
    newest = [await _build(store, clock, agent, BuildState.FAILED) for _ in range(2)]

    snap = await history_snapshot(store, 100)
    assert [b.released for b in snap.builds] == [True, False, False, False]
    lease = LeaderLease(store, "c1", 5, clock)
    assert await lease.run_once()

    artifacts = ArtifactRetention(store, blobs, lease, clock, RetentionPolicy(1, None))
    assert await artifacts.run_once() == 3  # plain's; the released build keeps its own
    assert len(await store.list_artifacts(released)) == 1

    history = HistoryRetention(store, blobs, lease, clock, RetentionPolicy(1, None))
    await history.run_once()
    assert (await store.get_build(released)).id == released
    with pytest.raises(NotFound):
        await store.get_build(plain)

    strict = HistoryRetention(
        store, blobs, lease, clock, RetentionPolicy(1, None, keep_released=False)
    )
    await strict.run_once()
    with pytest.raises(NotFound):
        await store.get_build(released)
    assert (await store.get_build(newest[-1])).id == newest[-1]
