"""Artifact retention in the store (SQLite and PostgreSQL): the snapshot, pruning rows,
pinning; and the leader loop that applies the policy, with real blobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.blobs import FolderBlobStore
from conveyor.controller.leader import LeaderLease
from conveyor.controller.retention import ArtifactRetention
from conveyor.core.retention import RetentionPolicy
from conveyor.core.states import BuildState
from conveyor.errors import NotFound
from conveyor.store import Store
from conveyor.store.retention import (
    delete_artifacts_of,
    is_pinned,
    retention_snapshot,
    set_pinned,
)
from conveyor.store.store import Fence, FencedOut
from tests.conftest import FakeClock
from tests.store.test_contract import fields, new_build


class FakeCounter:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class FakeMetrics:
    def __init__(self) -> None:
        self.retention_freed_bytes_total = FakeCounter()


async def _agent(store: Store, clock: FakeClock) -> int:
    return (await store.register_agent("a1", ["linux"], 8, "1", clock())).id


async def _build(
    store: Store,
    clock: FakeClock,
    agent: int,
    result: BuildState | None = BuildState.SUCCEEDED,
    artifacts: dict[str, int] | None = None,
    job: str = "app",
    blobs: FolderBlobStore | None = None,
) -> int:
    """A build of ``job`` that ran on ``agent``, uploaded ``artifacts`` (path: size) and,
    unless ``result`` is None, finished with it."""
    build = await store.create_build(new_build(job), clock())
    aid = f"aid-{build.id}"
    await store.assign_builds([(build.id, agent, aid)], None, clock())
    await store.start_build(aid, agent, clock())
    for path, size in (artifacts or {}).items():
        key = f"artifacts/{build.id}/{path}"
        if blobs is not None:
            await blobs.put_bytes(key, b"x" * size)
        await store.record_artifact(aid, agent, path, size, "0" * 64, "text/plain", key, clock())
    if result is not None:
        await store.finish_build(aid, agent, result, None, clock())
    return build.id


async def test_snapshot_pages_counts_and_last_succeeded(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    await store.create_job(fields("lib"), None, clock())
    agent = await _agent(store, clock)
    b1 = await _build(store, clock, agent, artifacts={"a.txt": 3, "dir/b.txt": 4})
    b2 = await _build(store, clock, agent, BuildState.FAILED, {"a.txt": 5})
    b3 = await _build(store, clock, agent, BuildState.SUCCEEDED)  # no artifacts
    running = await _build(store, clock, agent, None, {"a.txt": 1})
    lib1 = await _build(store, clock, agent, BuildState.FAILED, {"x": 7}, job="lib")
    pinned = await _build(store, clock, agent, BuildState.FAILED, {"y": 9}, job="lib")
    await set_pinned(store, pinned, True)

    snap = await retention_snapshot(store, 100)
    assert [b.id for b in snap.builds] == [b1, b2, lib1]  # with artifacts, finished, unpinned
    first = snap.builds[0]
    assert (first.job, first.number, first.state) == ("app", 1, BuildState.SUCCEEDED)
    assert (first.artifact_count, first.artifact_bytes) == (2, 7)
    assert first.newer == 2  # b2 and b3 (finished); the running build does not count
    assert first.finished_at == clock() and not first.pinned
    assert snap.builds[1].newer == 1 and snap.builds[2].newer == 1  # lib: the pinned one
    assert snap.last_succeeded == {"app": b3}  # lib has none

    page1 = await retention_snapshot(store, 2)
    assert [b.id for b in page1.builds] == [b1, b2]
    page2 = await retention_snapshot(store, 2, after=b2)
    assert [b.id for b in page2.builds] == [lib1]
    assert page2.last_succeeded == {}
    assert running not in [b.id for b in snap.builds]


async def test_delete_artifacts_of_is_conditional_and_fenced(
    store: Store, clock: FakeClock
) -> None:
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    done = await _build(store, clock, agent, artifacts={"b.txt": 1, "a/c.txt": 2})
    running = await _build(store, clock, agent, None, {"x": 1})
    pinned = await _build(store, clock, agent, artifacts={"y": 1})
    await set_pinned(store, pinned, True)

    assert await delete_artifacts_of(store, running) == []
    assert await delete_artifacts_of(store, pinned) == []
    assert await delete_artifacts_of(store, 999_999) == []
    assert len(await store.list_artifacts(pinned)) == 1

    assert await store.acquire_lease("leader", "c1", 5, clock()) == 1
    with pytest.raises(FencedOut):
        await delete_artifacts_of(store, done, fence=Fence("leader", "c1", 7), now=clock())
    assert len(await store.list_artifacts(done)) == 2
    keys = await delete_artifacts_of(store, done, fence=Fence("leader", "c1", 1), now=clock())
    assert keys == [f"artifacts/{done}/a/c.txt", f"artifacts/{done}/b.txt"]
    assert await store.list_artifacts(done) == []
    assert await delete_artifacts_of(store, done) == []
    assert (await store.get_build(done)).state == BuildState.SUCCEEDED  # the build stays


async def test_pin_and_unpin(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    build = await _build(store, clock, agent)
    assert await is_pinned(store, build) is False
    await set_pinned(store, build, True)
    await set_pinned(store, build, True)  # idempotent
    assert await is_pinned(store, build) is True
    await set_pinned(store, build, False)
    assert await is_pinned(store, build) is False
    with pytest.raises(NotFound, match="build 999 not found"):
        await set_pinned(store, 999, True)
    with pytest.raises(NotFound):
        await is_pinned(store, 999)


async def test_retention_loop_prunes_rows_then_blobs(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    old = await _build(store, clock, agent, artifacts={"a.txt": 10, "d/b.txt": 20}, blobs=blobs)
    old_pinned = await _build(store, clock, agent, artifacts={"a.txt": 5}, blobs=blobs)
    await set_pinned(store, old_pinned, True)
    last_good = await _build(store, clock, agent, artifacts={"a.txt": 7}, blobs=blobs)
    clock.advance(40 * 86400)
    failed = await _build(store, clock, agent, BuildState.FAILED, {"a.txt": 1}, blobs=blobs)

    lease = LeaderLease(store, "c1", 5, clock)
    retention = ArtifactRetention(store, blobs, lease, clock, RetentionPolicy(None, 30))
    assert await retention.run_once() == 0  # not leading: does nothing
    assert len(await store.list_artifacts(old)) == 2

    assert await lease.run_once()
    assert await retention.run_once() == 30
    assert await store.list_artifacts(old) == []
    assert not (tmp_path / "blobs" / "artifacts" / str(old) / "a.txt").exists()
    assert not (tmp_path / "blobs" / "artifacts" / str(old) / "d" / "b.txt").exists()
    for kept in (old_pinned, last_good, failed):
        [artifact] = await store.list_artifacts(kept)
        assert await blobs.size(artifact.blob_key) == artifact.size
    assert await retention.run_once() == 0  # nothing left to do

    # Unpinned, the old build goes at the next pass; the last good one stays.
    await set_pinned(store, old_pinned, False)
    assert await retention.run_once() == 5
    everything = ArtifactRetention(store, blobs, lease, clock, RetentionPolicy(None, None))
    assert await everything.run_once() == 0


async def test_retention_loop_pages_through_many_builds(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")
    await store.create_job(fields(), None, clock())
    agent = await _agent(store, clock)
    ids = [await _build(store, clock, agent, artifacts={"f": 2}, blobs=blobs) for _ in range(7)]
    lease = LeaderLease(store, "c1", 5, clock)
    assert await lease.run_once()
    metrics = FakeMetrics()
    retention = ArtifactRetention(store, blobs, lease, clock, RetentionPolicy(2, None), metrics)
    retention.PAGE = 3
    assert await retention.run_once() == 10  # builds 1-5 (beyond the last 2)
    assert metrics.retention_freed_bytes_total.value == 10
    assert [len(await store.list_artifacts(i)) for i in ids] == [0, 0, 0, 0, 0, 1, 1]
