"""The leader's trigger loop, stepped by hand with a fake clock (SQLite and PostgreSQL):
cron with H, SCM polling, multibranch, upstream; exactly one build per firing even when
two controllers both believe they lead (a paused former leader)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx

from conveyor.controller.leader import LeaderLease
from conveyor.controller.triggers import TriggerLoop
from conveyor.core.cron import parse_cron
from conveyor.core.states import BuildState
from conveyor.runtime import Runtime
from conveyor.store.scm import all_job_meta, get_build_commit
from tests.conftest import FakeClock
from tests.scm.gitserver import Repo

STAGES = "stages:\n  - name: b\n    steps:\n      - echo: hi\n"


def loops(runtime: Runtime, clock: FakeClock) -> tuple[TriggerLoop, TriggerLoop]:
    """Two controllers' trigger loops on one store, both believing they lead."""
    assert runtime.triggers is not None and runtime.scm is not None
    deposed = LeaderLease(runtime.store, "paused-old-leader", 5.0, clock)
    deposed.epoch = 1  # it has not noticed yet that it lost the lease
    other = TriggerLoop(runtime.store, runtime.builds, runtime.scm, deposed, clock, 60.0)
    return runtime.triggers, other


async def test_cron_h_fires_once_per_scheduled_minute(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    spec = f"name: nightly\ntriggers: {{cron: 'H * * * *'}}\n{STAGES}"
    assert (await client.put("/api/v1/jobs/nightly", json={"spec": spec})).status_code == 201
    assert await runtime.lease.run_once()
    leader, paused = loops(runtime, clock)
    minute = next(iter(parse_cron("H * * * *", "nightly").minutes))
    clock.now = clock.now.replace(minute=0, second=0) + timedelta(hours=1)
    for _ in range(2 * 60 * 2):  # two hours in 30 s steps, both "leaders" each step
        clock.advance(30)
        await runtime.lease.run_once()
        await leader.run_once()
        await paused.run_once()
    builds = await runtime.store.list_builds("nightly")
    assert len(builds) == 2
    assert all(b.trigger.startswith("cron H * * * *") for b in builds)
    assert {b.queued_at.minute for b in builds} == {minute}


async def test_polling_and_upstream_fire_exactly_once(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "lib")
    repo.create({"README": "one"}, "one")
    lib = f"name: lib\nscm: {{git: '{repo.file_url}'}}\ntriggers: {{poll: 10s}}\n{STAGES}"
    deploy = (
        "name: deploy\nparameters: [{name: TARGET, default: dev}]\n"
        "triggers: {upstream: [{job: lib, on: success, parameters: {TARGET: staging}}]}\n" + STAGES
    )
    for name, spec in (("lib", lib), ("deploy", deploy)):
        assert (await client.put(f"/api/v1/jobs/{name}", json={"spec": spec})).is_success
    assert await runtime.lease.run_once()
    leader, paused = loops(runtime, clock)
    assert await leader.run_once() == 0  # the existing commit is the baseline
    pushed = repo.commit({"README": "two"}, "two")
    clock.advance(11)
    started = await leader.run_once() + await paused.run_once()
    assert started == 1
    clock.advance(11)
    assert await leader.run_once() + await paused.run_once() == 0
    [build] = await runtime.store.list_builds("lib")
    commit = await get_build_commit(runtime.store, build.id)
    assert commit is not None and commit.sha == pushed and commit.message == "two"

    # lib succeeds -> deploy starts once, with the upstream's parameters.
    await _finish(runtime, build.id, BuildState.SUCCEEDED)
    clock.advance(1)
    assert await leader.run_once() + await paused.run_once() == 1
    assert await leader.run_once() + await paused.run_once() == 0
    [downstream] = await runtime.store.list_builds("deploy")
    assert downstream.parameters == {"TARGET": "staging"}
    assert downstream.trigger == "upstream lib #1 (succeeded)"


async def test_multibranch_sub_jobs_have_own_history_and_deleted_branches_archive(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "svc")
    repo.create({"README": "main"}, "main")
    repo.commit({"x": "1"}, "feature x", branch="feature/x")
    repo.commit({"y": "1"}, "release 1", branch="release/1")
    spec = (
        f"name: svc\nscm: {{git: '{repo.file_url}', branches: 'main feature/*'}}\n"
        f"triggers: {{poll: 10s}}\n{STAGES}"
    )
    assert (await client.put("/api/v1/jobs/svc", json={"spec": spec})).is_success
    assert await runtime.lease.run_once()
    leader, paused = loops(runtime, clock)
    assert await leader.run_once() + await paused.run_once() == 2  # each new branch builds
    names = sorted(j.name for j in await runtime.store.list_jobs())
    assert names == ["svc", "svc/feature-x", "svc/main"]
    assert len(await runtime.store.list_builds("svc/main")) == 1
    assert len(await runtime.store.list_builds("svc/feature-x")) == 1

    pushed = repo.commit({"x": "2"}, "feature x again", branch="feature/x")
    clock.advance(11)
    assert await leader.run_once() + await paused.run_once() == 1
    builds = await runtime.store.list_builds("svc/feature-x")
    assert len(builds) == 2 and len(await runtime.store.list_builds("svc/main")) == 1
    newest = await get_build_commit(runtime.store, builds[0].id)
    assert newest is not None and newest.sha == pushed and newest.branch == "feature/x"

    # A change of the multibranch job reaches its branch jobs.
    changed = spec.replace("echo: hi", "echo: changed")
    assert (await client.put("/api/v1/jobs/svc", json={"spec": changed})).is_success
    clock.advance(11)
    await leader.run_once()
    assert "echo: changed" in (await runtime.store.get_job("svc/main")).spec

    repo.delete_branch("feature/x")
    clock.advance(11)
    await leader.run_once()
    meta = await all_job_meta(runtime.store)
    assert meta["svc/feature-x"].archived and not meta["svc/main"].archived
    # Archived, not lost: the job and its history are still there.
    assert len(await runtime.store.list_builds("svc/feature-x")) == 2
    refused = await client.post("/api/v1/jobs/svc/feature-x/builds", json={})
    assert refused.status_code == 409 and "archived" in refused.json()["detail"]


async def _finish(runtime: Runtime, build_id: int, state: BuildState) -> None:
    from sqlalchemy import update

    from conveyor.store.schema import builds

    async with runtime.store.write() as conn:
        await conn.execute(
            update(builds)
            .where(builds.c.id == build_id)
            .values(state=state.value, finished_at=runtime.clock())
        )
