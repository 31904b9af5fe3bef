"""Per-build log size limit (executor side, real subprocesses) and the back-pressure
that makes a slow log consumer slow the step down instead of dropping output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor.core.loglimit import format_size, parse_size, truncation_line
from conveyor.core.pipeline import SpecError, parse_pipeline, plan_build
from conveyor.core.plan import BuildPlan
from conveyor.core.states import BuildState, StepState
from tests.unit.test_executor import FakeReporter, echo, make, sh, stage


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


async def test_log_is_cut_at_the_limit_with_one_line_and_the_build_goes_on(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage(
                "build",
                sh("s1", "head -c 200000 /dev/zero | tr '\\0' 'x'; echo; echo done > marker"),
                echo("s2", "after the cut"),
                sh("s3", "test -f marker"),
            )
        ],
        log_limit=4096,
        log_limit_source="job log_limit",
    )
    executor, reporter = make(ws, plan)
    assert await executor.run() == BuildState.SUCCEEDED
    log = b"".join(reporter.chunks)
    line = truncation_line(4096, "job log_limit")
    assert log.endswith(line)
    assert log.count(b"[conveyor] log truncated") == 1
    assert len(log) <= 4096 + 1 + len(line)
    assert b"after the cut" not in log  # dropped, like everything after the limit
    assert [reporter.finished(k)[-1][0] for k in ("s1", "s2", "s3")] == [StepState.SUCCEEDED] * 3
    assert line.decode().startswith("[conveyor] log truncated at 4 KB (limit 4 KB, job log_limit)")


async def test_no_limit_keeps_everything(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("s1", "head -c 300000 /dev/zero"))])
    executor, reporter = make(ws, plan)
    assert await executor.run() == BuildState.SUCCEEDED
    assert sum(c.count(b"\0") for c in reporter.chunks) == 300_000


class BlockedReporter(FakeReporter):
    """A log consumer that takes nothing until released (a controller that is slow or
    an outbox that is full)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def log(self, data: bytes) -> None:
        await self.release.wait()
        await super().log(data)


async def test_a_blocked_log_consumer_slows_the_step_and_nothing_is_dropped(ws: Path) -> None:
    size = 4 * 1024 * 1024  # far more than a pipe buffer
    script = f"head -c {size} /dev/zero; echo $$ > pid; echo finished-writing > done"
    plan = BuildPlan(stages=[stage("build", sh("s1", script))])
    executor = make(ws, plan)[0]
    reporter = BlockedReporter()
    executor.reporter = reporter
    run = asyncio.create_task(executor.run())
    await asyncio.sleep(1.5)
    # The step cannot finish writing: its output waits in the pipe, not in memory.
    assert not (ws / "done").exists()
    assert not run.done()
    reporter.release.set()
    assert await asyncio.wait_for(run, 60) == BuildState.SUCCEEDED
    assert sum(c.count(b"\0") for c in reporter.chunks) == size
    assert (ws / "done").exists()


def test_sizes() -> None:
    assert parse_size("100MB") == 100 * 1024**2
    assert parse_size("1.5 GiB") == int(1.5 * 1024**3)
    assert parse_size("64kb") == 65536
    assert parse_size(2048) == 2048
    assert format_size(100 * 1024**2) == "100 MB"
    assert format_size(1536) == "1.5 KB"
    for bad in ("lots", "10", "5 PB", True, -1):
        with pytest.raises(ValueError):
            parse_size(bad)


def _pipeline(extra: str) -> str:
    return f"name: app\n{extra}\nstages:\n  - name: s\n    steps:\n      - sh: x\n"


def test_job_log_limit_goes_into_the_plan() -> None:
    plan = plan_build(parse_pipeline(_pipeline("log_limit: 50MB")), {})
    assert (plan.log_limit, plan.log_limit_source) == (50 * 1024**2, "job log_limit")
    assert plan_build(parse_pipeline(_pipeline("")), {}).log_limit is None
    with pytest.raises(SpecError, match="invalid size 'lots'"):
        parse_pipeline(_pipeline("log_limit: lots"))
    with pytest.raises(SpecError, match="between 1 KB and 1 TB"):
        parse_pipeline(_pipeline("log_limit: 10"))
