"""Failure analysis in the store (SQLite and PostgreSQL), and the analyser end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.api.schemas import BuildOut
from conveyor.blobs import FolderBlobStore
from conveyor.controller.failures import FailureAnalyzer
from conveyor.core.failures import MAX_LOG_BYTES
from conveyor.core.states import BuildState, StepState
from conveyor.errors import NotFound
from conveyor.store import Store
from conveyor.store.failures import get_failure_analysis, record_failure_analysis
from conveyor.store.records import BuildRecord
from tests.conftest import FakeClock
from tests.store.test_contract import fields, new_build

DETAIL = {
    "pattern": "gcc-clang-error",
    "line_number": 4,
    "line": "main.c:7:5: error: x",
    "offset": 9,
}


async def _running(store: Store, clock: FakeClock, aid: str = "aid") -> tuple[BuildRecord, int]:
    if not await store.list_jobs():
        await store.create_job(fields(), None, clock())
    build = await store.create_build(new_build(), clock())
    agent = (await store.register_agent(f"agent-{aid}", ["linux"], 2, "1", clock())).id
    await store.assign_builds([(build.id, agent, aid)], None, clock())
    await store.start_build(aid, agent, clock())
    return build, agent


async def _failed(store: Store, clock: FakeClock, log: bytes, aid: str = "aid") -> BuildRecord:
    _, agent = await _running(store, clock, aid)
    if log:
        await store.append_log(aid, agent, 0, 0, log)
    await store.update_step(aid, agent, "0.0", StepState.RUNNING, None, 1, clock())
    await store.update_step(aid, agent, "0.0", StepState.FAILED, 2, 1, clock())
    done, _ = await store.finish_build(aid, agent, BuildState.FAILED, None, clock())
    assert done.cause == "step 'sh: make' in stage build failed with exit code 2"
    return done


async def test_record_and_read(store: Store, clock: FakeClock) -> None:
    build = await _failed(store, clock, b"")
    assert await get_failure_analysis(store, build.id) is None
    assert (await store.get_build(build.id)).failure_category is None

    await record_failure_analysis(store, build.id, "compile", "compile error in main.c", DETAIL)
    assert await get_failure_analysis(store, build.id) == ("compile", DETAIL)
    fresh = await store.get_build(build.id)
    assert fresh.failure_category == "compile"
    assert fresh.cause == "compile error in main.c"  # the generic step cause was replaced
    assert BuildOut.of(fresh).failure_category == "compile"

    # Again (another controller, the reaper): same result, and a null cause keeps the cause.
    await record_failure_analysis(store, build.id, "unknown", None, {"pattern": None})
    assert await get_failure_analysis(store, build.id) == ("unknown", {"pattern": None})
    assert (await store.get_build(build.id)).cause == "compile error in main.c"


async def test_cause_kept_for_agent_lost_and_cancel(store: Store, clock: FakeClock) -> None:
    build, _ = await _running(store, clock)
    clock.advance(60)
    lost = await store.reap_agents(clock(), None, clock())
    assert [b.id for b in lost] == [build.id] and lost[0].cause == "agent lost"
    await record_failure_analysis(store, build.id, "agent_lost", "something else", {})
    fresh = await store.get_build(build.id)
    assert fresh.cause == "agent lost" and fresh.failure_category == "agent_lost"

    other, _ = await _running(store, clock, "aid2")
    await store.request_cancel(other.id, clock(), "alice")
    await record_failure_analysis(store, other.id, "test", "tests failed", {})
    assert (await store.get_build(other.id)).cause == "cancelled by alice"


async def test_null_cause_is_filled(store: Store, clock: FakeClock) -> None:
    build, agent = await _running(store, clock)
    done, _ = await store.finish_build("aid", agent, BuildState.FAILED, None, clock())
    assert done.cause is None  # no failed step to blame
    await record_failure_analysis(store, build.id, "test", "JUnit: 1 failed\x00", {"x": "é"})
    fresh = await store.get_build(build.id)
    assert fresh.cause == "JUnit: 1 failed"
    assert await get_failure_analysis(store, build.id) == ("test", {"x": "é"})


async def test_unknown_build(store: Store) -> None:
    with pytest.raises(NotFound):
        await record_failure_analysis(store, 999_999, "test", None, {})
    with pytest.raises(NotFound):
        await get_failure_analysis(store, 999_999)


# ------------------------------------------------------------ the analyser


GCC_LOG = (
    b"\x1b[1m==> [build] sh: make\x1b[0m\n"
    b"gcc -c main.c\n"
    b"main.c:7:5: error: 'y' undeclared\n"
    b"make: *** [Makefile:4: main.o] Error 1\n"
    b"\x1b[31m==> step failed with exit code 2\x1b[0m\n"
)


async def test_analyser_reads_live_chunks(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    build = await _failed(store, clock, GCC_LOG)
    analysis = await FailureAnalyzer.load().analyse(store, FolderBlobStore(tmp_path), build)
    assert analysis is not None and analysis.category == "compile"
    fresh = await store.get_build(build.id)
    assert fresh.failure_category == "compile"
    assert fresh.cause == "compile error in main.c:7: 'y' undeclared"
    stored = await get_failure_analysis(store, build.id)
    assert stored == (
        "compile",
        {
            "pattern": "gcc-clang-error",
            "line_number": 3,
            "line": "main.c:7:5: error: 'y' undeclared",
            "offset": GCC_LOG.index(b"main.c:7"),
        },
    )


async def test_analyser_reads_the_tail_of_a_compacted_blob(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    build = await _failed(store, clock, b"")
    blobs = FolderBlobStore(tmp_path)
    filler = b"x" * 99 + b"\n"
    data = b"E   MemoryError\n" + filler * (MAX_LOG_BYTES // 100 + 10) + GCC_LOG
    stored = await blobs.put_bytes("logs/b.log", data)
    await store.mark_log_compacted(build.id, "logs/b.log", stored.size)
    analysis = await FailureAnalyzer.load().analyse(store, blobs, build)
    assert analysis is not None
    assert analysis.pattern == "gcc-clang-error"  # the MemoryError is outside the tail
    assert analysis.offset == data.index(b"main.c:7") and analysis.line_number is None


async def test_analyser_unknown_timeout_and_success(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path)
    analyzer = FailureAnalyzer.load()
    failed = await _failed(store, clock, b"nothing to see\n")
    found = await analyzer.analyse(store, blobs, failed)
    assert found is not None and found.category == "unknown"
    assert (await store.get_build(failed.id)).cause == failed.cause  # unchanged

    build, agent = await _running(store, clock, "aid2")
    await store.finish_build("aid2", agent, BuildState.TIMED_OUT, "build timed out", clock())
    found = await analyzer.analyse(store, blobs, build)
    assert found is not None and found.category == "timeout"
    assert (await store.get_build(build.id)).failure_category == "timeout"

    ok, agent = await _running(store, clock, "aid3")
    await store.finish_build("aid3", agent, BuildState.SUCCEEDED, None, clock())
    assert await analyzer.analyse(store, blobs, ok) is None
    assert await get_failure_analysis(store, ok.id) is None

    # A missing blob does not break anything: the state still classifies.
    await store.mark_log_compacted(build.id, "logs/gone.log", 100)
    assert (await analyzer.analyse_quietly(store, blobs, build)) is not None
