"""The store contract: every test runs against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor.blobs.folder import FolderBlobStore
from conveyor.controller.builds import BuildService
from conveyor.controller.dispatcher import QUEUE_PAGE, Dispatcher
from conveyor.controller.leader import LeaderLease
from conveyor.controller.wakeups import Wakeups
from conveyor.core.dispatch import Strategy
from conveyor.core.states import BuildState, StepState
from conveyor.errors import Conflict, NotFound
from conveyor.store import Store
from conveyor.store.store import Fence, FencedOut, JobFields, NewBuild, NewStep
from tests.conftest import FakeClock

SPEC = "name: app\nstages:\n  - name: build\n    steps:\n      - sh: make\n"


def fields(name: str = "app", spec: str = SPEC, concurrency: int | None = None) -> JobFields:
    return JobFields(
        name=name,
        spec=spec,
        description=None,
        label_expression=None,
        concurrency=concurrency,
        priority=0,
    )


def new_build(job: str = "app", **kw: Any) -> NewBuild:
    defaults: dict[str, Any] = {
        "job_name": job,
        "parameters": {"X": "1"},
        "plan": {"stages": []},
        "steps": [
            NewStep(key="0.0", stage="build", name="sh: make", kind="sh", skipped=False),
            NewStep(key="0.1", stage="build", name="sh: skip", kind="sh", skipped=True),
        ],
        "priority": 0,
        "label_expression": None,
        "trigger": "test",
    }
    defaults.update(kw)
    return NewBuild(**defaults)


async def test_job_create_update_versions(store: Store, clock: FakeClock) -> None:
    job = await store.create_job(fields(), "alice", clock())
    assert job.version == 1
    with pytest.raises(Conflict):
        await store.create_job(fields(), "alice", clock())
    updated = await store.update_job(fields(spec=SPEC + "# v2\n"), 1, "bob", clock())
    assert updated.version == 2
    with pytest.raises(Conflict):
        await store.update_job(fields(spec=SPEC + "# stale\n"), 1, "carol", clock())
    versions = await store.job_versions("app")
    assert [v.version for v in versions] == [2, 1]
    assert versions[0].author == "bob"
    assert (await store.get_job("app")).spec.endswith("# v2\n")
    with pytest.raises(NotFound):
        await store.get_job("nope")


async def test_concurrent_updates_exactly_one_wins(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    results = await asyncio.gather(
        store.update_job(fields(spec=SPEC + "# a\n"), 1, "a", clock()),
        store.update_job(fields(spec=SPEC + "# b\n"), 1, "b", clock()),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert (await store.get_job("app")).version == 2


async def test_build_numbers_and_steps(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    builds = [await store.create_build(new_build(), clock()) for _ in range(3)]
    assert [b.number for b in builds] == [1, 2, 3]
    assert len({b.id for b in builds}) == 3
    assert builds[0].state == BuildState.QUEUED
    steps = await store.build_steps(builds[0].id)
    assert [(s.key, s.state) for s in steps] == [
        ("0.0", StepState.PENDING),
        ("0.1", StepState.SKIPPED),
    ]
    assert (await store.get_build_by_number("app", 2)).id == builds[1].id
    with pytest.raises(NotFound):
        await store.create_build(new_build(job="missing"), clock())


async def test_list_builds_cursor(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    ids = [(await store.create_build(new_build(), clock())).id for _ in range(5)]
    page1 = await store.list_builds("app", limit=2)
    page2 = await store.list_builds("app", before_id=page1[-1].id, limit=2)
    page3 = await store.list_builds("app", before_id=page2[-1].id, limit=2)
    assert [b.id for b in page1 + page2 + page3] == sorted(ids, reverse=True)
    assert await store.list_builds("app", states=[BuildState.RUNNING]) == []


async def _agent(store: Store, clock: FakeClock, name: str = "a1", executors: int = 2) -> int:
    return (await store.register_agent(name, ["linux"], executors, "1", clock())).id


async def test_assignment_happens_once(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    a1 = await _agent(store, clock, "a1")
    a2 = await _agent(store, clock, "a2")
    first, second = await asyncio.gather(
        store.assign_builds([(build.id, a1, "x1")], None, clock()),
        store.assign_builds([(build.id, a2, "x2")], None, clock()),
    )
    assert len(first) + len(second) == 1
    fresh = await store.get_build(build.id)
    assert fresh.state == BuildState.ASSIGNED
    winner = "x1" if first else "x2"
    assert fresh.assignment_id == winner


async def test_fencing_refuses_a_stale_epoch(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    assert await store.acquire_lease("leader", "c1", 5, clock()) == 1
    clock.advance(6)
    assert await store.acquire_lease("leader", "c2", 5, clock()) == 2
    with pytest.raises(FencedOut):
        await store.assign_builds([(build.id, agent, "x")], Fence("leader", "c1", 1), clock())
    assert (await store.get_build(build.id)).state == BuildState.QUEUED
    done = await store.assign_builds([(build.id, agent, "x")], Fence("leader", "c2", 2), clock())
    assert len(done) == 1


async def test_lease_renew_and_takeover(store: Store, clock: FakeClock) -> None:
    assert await store.acquire_lease("leader", "c1", 5, clock()) == 1
    assert await store.acquire_lease("leader", "c2", 5, clock()) is None
    clock.advance(3)
    assert await store.acquire_lease("leader", "c1", 5, clock()) == 1  # renewed
    clock.advance(3)
    assert await store.acquire_lease("leader", "c2", 5, clock()) is None  # still held
    clock.advance(3)
    assert await store.acquire_lease("leader", "c2", 5, clock()) == 2  # expired: takeover
    await store.release_lease("leader", "c2", clock())
    assert await store.acquire_lease("leader", "c1", 5, clock()) == 3


async def test_run_log_finish_lifecycle(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    inbox = await store.agent_inbox(agent)
    assert [(i.assignment_id, i.cancel) for i in inbox] == [("aid", False)]
    with pytest.raises(NotFound):
        await store.start_build("aid", agent + 1000, clock())
    started = await store.start_build("aid", agent, clock())
    assert started.state == BuildState.RUNNING
    assert (await store.start_build("aid", agent, clock())).state == BuildState.RUNNING
    assert await store.agent_inbox(agent) == []

    await store.append_log("aid", agent, 0, 0, b"hello ")
    await store.append_log("aid", agent, 1, 6, b"world\n")
    await store.append_log("aid", agent, 1, 6, b"world\n")  # a resend changes nothing
    assert await store.read_log_chunks(build.id, 0, 100) == b"hello world\n"
    assert await store.read_log_chunks(build.id, 3, 5) == b"lo wo"
    assert (await store.get_build(build.id)).log_size == 12

    await store.update_step("aid", agent, "0.0", StepState.RUNNING, None, 1, clock())
    await store.update_step("aid", agent, "0.0", StepState.SUCCEEDED, 0, 1, clock())
    done, changed = await store.finish_build("aid", agent, BuildState.SUCCEEDED, None, clock())
    assert changed and done.state == BuildState.SUCCEEDED
    again, changed = await store.finish_build("aid", agent, BuildState.FAILED, None, clock())
    assert not changed and again.state == BuildState.SUCCEEDED
    steps = {s.key: s for s in await store.build_steps(build.id)}
    assert steps["0.0"].state == StepState.SUCCEEDED and steps["0.0"].exit_code == 0

    assert await store.uncompacted_finished_builds() == [build.id]
    assert await store.mark_log_compacted(build.id, "logs/x.log", 12)
    # A racing second compaction does not take effect (its caller deletes its blob).
    assert not await store.mark_log_compacted(build.id, "logs/y.log", 0)
    fresh = await store.get_build(build.id)
    assert (fresh.log_blob, fresh.log_size) == ("logs/x.log", 12)
    assert await store.uncompacted_finished_builds() == []
    assert await store.read_log_chunks(build.id, 0, 100) == b""


async def test_log_gap_is_not_skipped(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    await store.start_build("aid", agent, clock())
    await store.append_log("aid", agent, 0, 0, b"aaa")
    await store.append_log("aid", agent, 2, 6, b"ccc")  # chunk 1 not delivered yet
    assert await store.read_log_chunks(build.id, 0, 100) == b"aaa"
    await store.append_log("aid", agent, 1, 3, b"bbb")
    assert await store.read_log_chunks(build.id, 0, 100) == b"aaabbbccc"


async def test_cancel_queued_and_running(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    queued = await store.create_build(new_build(), clock())
    running = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(running.id, agent, "aid")], None, clock())
    await store.start_build("aid", agent, clock())
    cancelled = await store.request_cancel(queued.id, clock(), "alice")
    assert cancelled.state == BuildState.CANCELLED
    assert all(s.state == StepState.SKIPPED for s in await store.build_steps(queued.id))
    asked = await store.request_cancel(running.id, clock(), "alice")
    assert asked.state == BuildState.RUNNING and asked.cancel_requested
    inbox = await store.agent_inbox(agent)
    assert [(i.assignment_id, i.cancel) for i in inbox] == [("aid", True)]


async def test_reaper_loses_builds_of_silent_agents(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    other = await _agent(store, clock, "a2")
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    await store.start_build("aid", agent, clock())
    clock.advance(20)
    await store.touch_agent(other, clock())
    lost = await store.reap_agents(clock.now.replace() - _seconds(15), None, clock())
    assert [b.id for b in lost] == [build.id]
    assert lost[0].state == BuildState.LOST and lost[0].cause == "agent lost"
    agents = {a.name: a for a in await store.list_agents()}
    assert not agents["a1"].online and agents["a2"].online
    assert await store.reap_agents(clock() - _seconds(15), None, clock()) == []
    assert await store.touch_agent(agent, clock()) is True  # came back
    states = await store.builds_of_agent(agent, ["aid", "zzz"])
    assert states == {"aid": "lost", "zzz": "unknown"}


def _seconds(n: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=n)


async def test_dispatch_rows(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(concurrency=1), None, clock())
    b1 = await store.create_build(new_build(priority=0), clock())
    b2 = await store.create_build(new_build(priority=5), clock())
    agent = await _agent(store, clock)
    rows = await store.dispatch_rows(clock())
    assert [q.build_id for q in rows.queued] == [b2.id, b1.id]
    assert rows.queued[0].job_concurrency == 1
    assert rows.agents[0].busy == 0 and rows.agents[0].online
    await store.assign_builds([(b2.id, agent, "aid")], None, clock())
    rows = await store.dispatch_rows(clock())
    assert rows.agents[0].busy == 1
    assert rows.active_per_job == {"app": 1}


async def test_artifacts_and_tokens(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    await store.record_artifact(
        "aid", agent, "dist/a.txt", 3, "ab" * 32, "text/plain", "k1", clock()
    )
    await store.record_artifact(
        "aid", agent, "dist/a.txt", 4, "cd" * 32, "text/plain", "k2", clock()
    )
    arts = await store.list_artifacts(build.id)
    assert [(a.path, a.size, a.blob_key) for a in arts] == [("dist/a.txt", 4, "k2")]
    with pytest.raises(NotFound):
        await store.get_artifact(build.id, "nope")

    assert await store.count_tokens() == 0
    await store.create_token("admin", "h" * 64, "admin", clock())
    found = await store.find_token("h" * 64)
    assert found is not None and found.scope == "admin"
    assert await store.find_token("x" * 64) is None


async def test_delete_job_removes_builds(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    with pytest.raises(Conflict):
        await store.delete_job("app")
    await store.finish_build("aid", agent, BuildState.SUCCEEDED, None, clock())
    await store.mark_log_compacted(build.id, "logs/1.log", 0)
    assert await store.delete_job("app") == ["logs/1.log"]
    with pytest.raises(NotFound):
        await store.get_build(build.id)


async def test_a_live_log_streams_window_by_window(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    """Compaction reads a live log a bounded window at a time (never whole) and
    stores exactly the bytes delivered, up to the first gap."""
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    await store.start_build("aid", agent, clock())
    chunks = [bytes([65 + i]) * (700 + 37 * i) for i in range(12)]
    offset = 0
    for seq, chunk in enumerate(chunks):
        await store.append_log("aid", agent, seq, offset, chunk)
        offset += len(chunk)
    whole = b"".join(chunks)
    windows = [w async for w in store.iter_log_chunks(build.id, window=1000)]
    assert all(len(w) <= 1000 for w in windows) and len(windows) >= len(whole) // 1000
    assert b"".join(windows) == whole
    assert b"".join([w async for w in store.iter_log_chunks(build.id, 5, window=333)]) == whole[5:]
    # A chunk not delivered yet: the stream stops before the gap.
    await store.append_log("aid", agent, 13, offset + 10, b"later")
    assert b"".join([w async for w in store.iter_log_chunks(build.id, window=999)]) == whole

    await store.finish_build("aid", agent, BuildState.SUCCEEDED, None, clock())
    await store.append_log("aid", agent, 12, offset, b"0123456789")
    blobs = FolderBlobStore(tmp_path / "blobs")
    await BuildService(store, blobs, Wakeups(), clock).compact_log(build.id)
    fresh = await store.get_build(build.id)
    assert fresh.log_blob is not None and fresh.log_size == len(whole) + 15
    assert await blobs.read_range(fresh.log_blob, 0, 10**6) == whole + b"0123456789later"


async def test_compacted_chunks_are_dropped_in_batches_and_leftovers_found(
    store: Store, clock: FakeClock
) -> None:
    await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = await _agent(store, clock)
    await store.assign_builds([(build.id, agent, "aid")], None, clock())
    await store.start_build("aid", agent, clock())
    for seq in range(7):
        await store.append_log("aid", agent, seq, seq * 100, b"z" * 100)
    await store.finish_build("aid", agent, BuildState.SUCCEEDED, None, clock())
    assert await store.compacted_builds_with_chunks() == []  # not compacted yet
    # A crash between the compaction and the deletion of the chunks leaves them:
    drop = store.drop_log_chunks
    store.drop_log_chunks = _noop  # type: ignore[method-assign]
    try:
        assert await store.mark_log_compacted(build.id, "logs/x.log", 700)
    finally:
        store.drop_log_chunks = drop  # type: ignore[method-assign]
    assert await store.compacted_builds_with_chunks() == [build.id]
    await store.drop_log_chunks(build.id, batch_bytes=250)  # 3 rows per transaction
    assert await store.compacted_builds_with_chunks() == []
    assert await store.read_log_chunks(build.id, 0, 1000) == b""


async def _noop(*_: object, **__: object) -> None:
    return None


async def test_dispatch_reader_pages_in_dispatch_order(store: Store, clock: FakeClock) -> None:
    await store.create_job(fields(), None, clock())
    low = [(await store.create_build(new_build(priority=0), clock())).id for _ in range(3)]
    high = [(await store.create_build(new_build(priority=5), clock())).id for _ in range(2)]
    async with store.dispatch_reader() as reader:
        assert await reader.has_queued()
        first = await reader.queued(3)
        rest = await reader.queued(10, first[-1])
    assert [q.build_id for q in first + rest] == high + low
    assert len(rest) == 2


async def test_dispatcher_looks_past_builds_it_cannot_place(store: Store, clock: FakeClock) -> None:
    """A pass reads the queue page by page: a long head of builds that no agent
    matches does not hide a later build that one can run."""
    await store.create_job(fields(), None, clock())
    for _ in range(QUEUE_PAGE + 5):
        await store.create_build(new_build(label_expression="windows"), clock())
    runnable = await store.create_build(new_build(), clock())
    await _agent(store, clock, "a1", executors=1)
    lease = LeaderLease(store, "c1", 30, clock)
    assert await lease.run_once()
    dispatcher = Dispatcher(store, Wakeups(), lease, Strategy.LABEL_MATCH, clock)
    assert await dispatcher.run_once() == 1
    assert (await store.get_build(runnable.id)).state == BuildState.ASSIGNED
    # No executor free now: the next pass stops before reading the queue.
    assert await dispatcher.run_once() == 0
