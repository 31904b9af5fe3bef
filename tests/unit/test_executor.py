"""The agent's build executor, with real subprocesses and a recording reporter."""

# Tiny workspace file operations inside async tests are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conveyor.agent import process
from conveyor.agent.executor import BuildContext, BuildExecutor
from conveyor.core.plan import BuildPlan, StagePlan, StepPlan
from conveyor.core.states import BuildState, StepState

SKIPPED = StepState.SKIPPED


class FakeReporter:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.events: list[tuple[Any, ...]] = []
        self.uploads: dict[str, bytes] = {}
        self.fail_on: bytes | None = None

    async def log(self, data: bytes) -> None:
        if self.fail_on is not None and self.fail_on in data:
            raise RuntimeError("log endpoint is down")
        self.chunks.append(data)

    async def step_started(self, key: str, attempt: int) -> None:
        self.events.append(("started", key, attempt))

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        self.events.append(("finished", key, state, exit_code, attempt))

    async def upload_artifact(self, rel_path: str, file: Path) -> None:
        self.uploads[rel_path] = file.read_bytes()

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        pass

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def finished(self, key: str) -> list[tuple[Any, ...]]:
        return [e[2:] for e in self.events if e[0] == "finished" and e[1] == key]

    def ran(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "started"]


def sh(key: str, script: str, stage: str = "build", **kw: Any) -> StepPlan:
    return StepPlan(key=key, stage=stage, kind="sh", name=f"sh: {script}", script=script, **kw)


def echo(key: str, message: str, stage: str = "build") -> StepPlan:
    return StepPlan(key=key, stage=stage, kind="echo", name=f"echo: {message}", message=message)


def stage(key: str, *steps: StepPlan, **kw: Any) -> StagePlan:
    return StagePlan(key=key, name=key, steps=list(steps), **kw)


def read_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def still_alive(pids: list[int], within: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``within`` seconds (a generous liveness
    bound: a killed process may take a moment to be reaped on a loaded machine)."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if not gone(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Path]:
    workspace = tmp_path / "ws"
    yield workspace
    # Safety net so a failing test does not leave sleepers behind.
    for pid_file in workspace.glob("*.pids"):
        for pid in read_pids(pid_file):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if "sleep" in " ".join(proc.cmdline()):
                    proc.send_signal(signal.SIGKILL)


def make(
    ws: Path,
    plan: BuildPlan,
    base_env: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[BuildExecutor, FakeReporter]:
    reporter = FakeReporter()
    ctx = BuildContext(
        build_id=7, plan=plan, workspace=ws, base_env=base_env or {}, kill_grace=0.5, **kw
    )
    return BuildExecutor(ctx, reporter), reporter


async def wait_for_file(path: Path, bound: float = 10.0) -> None:
    give_up = time.monotonic() + bound
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        await asyncio.sleep(0.02)


async def test_success_logs_and_order(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", echo("s1", "hello"), sh("s2", "echo compiled; echo to-stderr >&2")),
            stage("test", sh("s3", "test -f marker || touch marker; pwd", stage="test")),
        ],
        post={
            "success": [echo("p-ok", "yay", stage="post.success")],
            "failure": [echo("p-fail", "boo", stage="post.failure")],
            "always": [echo("p-always", "bye", stage="post.always")],
        },
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert rep.ran() == ["s1", "s2", "s3", "p-ok", "p-always"]
    assert rep.finished("s1") == [(StepState.SUCCEEDED, None, 1)]
    assert rep.finished("s2") == [(StepState.SUCCEEDED, 0, 1)]
    assert rep.finished("p-fail") == [(SKIPPED, None, 0)]
    text = rep.text
    assert "\x1b[1m==> [build] echo: hello\x1b[0m\nhello\n" in text
    assert "\x1b[1m==> [build] sh: echo compiled; echo to-stderr >&2\x1b[0m\n" in text
    assert "compiled\nto-stderr\n" in text
    assert f"{ws.resolve()}\n" in text  # cwd is the workspace
    assert (ws / "marker").exists()
    assert text.index("hello") < text.index("compiled") < text.index("yay") < text.index("bye")


async def test_failure_skips_rest_and_runs_failure_then_always(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", sh("b1", "echo before; exit 2"), sh("b2", "touch never")),
            stage("test", sh("t1", "touch never", stage="test")),
        ],
        post={
            "success": [echo("p-ok", "yay", stage="post.success")],
            "failure": [echo("p-fail", "cleanup-after-failure", stage="post.failure")],
            "always": [echo("p-always", "bye", stage="post.always")],
        },
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.FAILED
    assert rep.finished("b1") == [(StepState.FAILED, 2, 1)]
    assert rep.finished("b2") == [(SKIPPED, None, 0)]
    assert rep.finished("t1") == [(SKIPPED, None, 0)]
    assert rep.finished("p-ok") == [(SKIPPED, None, 0)]
    assert rep.ran() == ["b1", "p-fail", "p-always"]
    assert "\x1b[31m==> step failed with exit code 2\x1b[0m\n" in rep.text
    assert rep.text.index("cleanup-after-failure") < rep.text.index("bye")
    assert not (ws / "never").exists()


async def test_pipefail_and_errexit(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("b1", "false | cat; echo not-reached"))])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.FAILED
    assert "\nnot-reached\n" not in rep.text


async def test_when_skipped_stage_is_reported_skipped(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", echo("b1", "hi")),
            stage("deploy", echo("d1", "deploying"), skipped=True, skip_reason="branch != main"),
        ]
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert rep.ran() == ["b1"]
    assert rep.finished("d1") == [(SKIPPED, None, 0)]
    assert "deploying" not in rep.text
    assert "skipped: branch != main" in rep.text


WAIT_FOR = (
    "touch {me}; for i in $(seq 200); do [ -e {other} ] && break; sleep 0.05; done; [ -e {other} ]"
)


async def test_parallel_children_run_concurrently_with_prefixed_lines(ws: Path) -> None:
    left = sh("l1", WAIT_FOR.format(me="left", other="right") + "; echo left-done", "test/left")
    right = sh("r1", WAIT_FOR.format(me="right", other="left") + "; echo right-done", "test/right")
    plan = BuildPlan(
        stages=[
            StagePlan(
                key="test",
                name="test",
                parallel=[
                    StagePlan(key="left", name="test/left", steps=[left]),
                    StagePlan(key="right", name="test/right", steps=[right]),
                ],
            ),
            stage("after", echo("a1", "after")),
        ]
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert rep.finished("l1") == [(StepState.SUCCEEDED, 0, 1)]
    assert rep.finished("r1") == [(StepState.SUCCEEDED, 0, 1)]
    lines = rep.text.splitlines()
    assert "[test/left] left-done" in lines
    assert "[test/right] right-done" in lines
    assert "after" in lines  # not prefixed: not in a parallel stage


async def test_parallel_child_failure_fails_stage_but_sibling_completes(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            StagePlan(
                key="test",
                name="test",
                parallel=[
                    stage("bad", sh("x1", "exit 3", "bad")),
                    stage("good", sh("g1", "sleep 0.3; echo good-done", "good")),
                ],
            ),
            stage("after", echo("a1", "after")),
        ]
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.FAILED
    assert rep.finished("x1") == [(StepState.FAILED, 3, 1)]
    assert rep.finished("g1") == [(StepState.SUCCEEDED, 0, 1)]
    assert rep.finished("a1") == [(SKIPPED, None, 0)]


COUNTER = (
    "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo try-$n; [ $n -ge 2 ]"
)


async def test_step_retry_succeeds_on_second_attempt(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("b1", COUNTER, retry=2))])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert [e for e in rep.events if e[1] == "b1"] == [
        ("started", "b1", 1),
        ("finished", "b1", StepState.FAILED, 1, 1),
        ("started", "b1", 2),
        ("finished", "b1", StepState.SUCCEEDED, 0, 2),
    ]
    assert "try-1" in rep.text and "try-2" in rep.text and "(attempt 2)" in rep.text


async def test_stage_retry_reruns_all_steps(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", echo("b0", "first"), sh("b1", COUNTER), retry=1)])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert rep.ran() == ["b0", "b1", "b0", "b1"]
    assert rep.finished("b1") == [(StepState.FAILED, 1, 1), (StepState.SUCCEEDED, 0, 2)]


KIDS = (
    "sleep 300 & echo $! >> kids.pids\n"
    "setsid sleep 300 & echo $! >> kids.pids\n"
    "(setsid sleep 300 & echo $! >> kids.pids)\n"  # orphaned at once: found by cookie
    "bash -c 'trap \"\" TERM; exec sleep 300' & echo $! >> kids.pids\n"  # needs SIGKILL
    "echo $$ >> kids.pids\n"
    "touch started\n"
    "sleep 300\n"
)


async def test_step_timeout_kills_the_whole_tree(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", sh("b1", KIDS, timeout=1.0)),
            stage("later", echo("l1", "later")),
        ],
        post={"failure": [echo("p-fail", "after-timeout", stage="post.failure")]},
    )
    executor, rep = make(ws, plan)
    t0 = time.monotonic()
    assert await executor.run() is BuildState.TIMED_OUT
    assert time.monotonic() - t0 < 10
    pids = read_pids(ws / "kids.pids")
    assert len(pids) == 5
    assert still_alive(pids) == []
    assert rep.finished("b1") == [(StepState.TIMED_OUT, None, 1)]
    assert rep.finished("l1") == [(SKIPPED, None, 0)]
    assert "\x1b[31m==> step timed out after 1s\x1b[0m\n" in rep.text
    assert "after-timeout" in rep.text


async def test_background_leftovers_are_killed_after_a_successful_step(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("b1", "sleep 300 & echo $! > bg.pids; echo ok"))])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    pids = read_pids(ws / "bg.pids")
    assert len(pids) == 1 and gone(pids[0])
    assert "stopped 1 leftover process(es)" in rep.text


async def test_build_timeout_ends_build_without_retry(ws: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", sh("b1", "sleep 300", retry=3), retry=2)],
        post={"always": [echo("p-always", "post-runs", stage="post.always")]},
        timeout=0.5,
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.TIMED_OUT
    assert rep.finished("b1") == [(StepState.TIMED_OUT, None, 1)]
    assert "==> build timed out after 0.5s" in rep.text
    assert "post-runs" in rep.text


async def test_cancel_during_long_step(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", sh("b1", KIDS), sh("b2", "touch never")),
            stage("later", echo("l1", "later")),
        ],
        post={
            "failure": [echo("p-fail", "failure-post", stage="post.failure")],
            "cancelled": [sh("p-cancel", "echo cancelled-post", stage="post.cancelled")],
            "always": [echo("p-always", "always-post", stage="post.always")],
        },
    )
    executor, rep = make(ws, plan)
    task = asyncio.create_task(executor.run())
    await wait_for_file(ws / "started")
    t0 = time.monotonic()
    executor.cancel()
    assert await asyncio.wait_for(task, 10) is BuildState.CANCELLED
    assert time.monotonic() - t0 < 5
    pids = read_pids(ws / "kids.pids")
    assert len(pids) == 5
    assert still_alive(pids) == []
    assert rep.finished("b1") == [(StepState.CANCELLED, None, 1)]
    assert rep.finished("b2") == [(SKIPPED, None, 0)]
    assert rep.finished("l1") == [(SKIPPED, None, 0)]
    assert rep.finished("p-fail") == [(SKIPPED, None, 0)]
    assert rep.finished("p-cancel") == [(StepState.SUCCEEDED, 0, 1)]
    assert "cancelled-post" in rep.text and "always-post" in rep.text
    assert "\x1b[33m==> step cancelled\x1b[0m\n" in rep.text
    assert not (ws / "never").exists()


async def test_second_cancel_kills_post_steps(ws: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", sh("b1", "touch started; sleep 300"))],
        post={
            "cancelled": [sh("p1", "touch post-started; sleep 300", stage="post.cancelled")],
            "always": [echo("p2", "always-post", stage="post.always")],
        },
    )
    executor, rep = make(ws, plan)
    task = asyncio.create_task(executor.run())
    await wait_for_file(ws / "started")
    executor.cancel()
    await wait_for_file(ws / "post-started")
    executor.cancel()
    assert await asyncio.wait_for(task, 10) is BuildState.CANCELLED
    assert rep.finished("p1") == [(StepState.CANCELLED, None, 1)]
    assert rep.finished("p2") == [(SKIPPED, None, 0)]


async def test_failing_post_step_fails_a_successful_build(ws: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", echo("b1", "ok"))],
        post={
            "success": [sh("p1", "exit 4", stage="post.success"), echo("p2", "x", "post.success")],
            "always": [echo("p3", "always-post", stage="post.always")],
        },
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.FAILED
    assert rep.finished("p1") == [(StepState.FAILED, 4, 1)]
    assert rep.finished("p2") == [(SKIPPED, None, 0)]
    assert "always-post" in rep.text


async def test_archive_uploads_matching_files(ws: Path) -> None:
    (ws / "dist" / "sub").mkdir(parents=True)
    (ws / "dist" / "a.tar.gz").write_bytes(b"A")
    (ws / "dist" / "sub" / "b.tar.gz").write_bytes(b"B")
    (ws / "dist" / "notes.txt").write_bytes(b"N")
    (ws / "dist" / "dir.tar.gz").mkdir()
    step = StepPlan(
        key="a1",
        stage="build",
        kind="archive",
        name="archive",
        paths=["dist/**/*.tar.gz", "reports/*.xml"],
    )
    executor, rep = make(ws, BuildPlan(stages=[stage("build", step)]))
    assert await executor.run() is BuildState.SUCCEEDED
    assert rep.uploads == {"dist/a.tar.gz": b"A", "dist/sub/b.tar.gz": b"B"}
    assert "archive: no files match 'reports/*.xml'" in rep.text


async def test_archive_refuses_symlink_out_of_the_workspace(ws: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.tar.gz"
    secret.write_bytes(b"secret")
    (ws / "dist").mkdir(parents=True)
    (ws / "dist" / "ok.tar.gz").write_bytes(b"ok")
    (ws / "dist" / "evil.tar.gz").symlink_to(secret)
    steps = [
        StepPlan(key="a1", stage="build", kind="archive", name="archive", paths=["dist/*"]),
    ]
    executor, rep = make(ws, BuildPlan(stages=[stage("build", *steps)]))
    assert await executor.run() is BuildState.FAILED
    assert rep.uploads == {}
    assert "refusing 'dist/evil.tar.gz'" in rep.text
    assert rep.finished("a1") == [(StepState.FAILED, None, 1)]


async def test_archive_dotdot_and_no_match(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("x")
    ws.mkdir()
    dotdot = StepPlan(key="a1", stage="b", kind="archive", name="archive", paths=["../*.txt"])
    executor, rep = make(ws, BuildPlan(stages=[stage("b", dotdot)]))
    assert await executor.run() is BuildState.FAILED
    assert rep.uploads == {} and "refusing '../outside.txt'" in rep.text

    none = StepPlan(key="a1", stage="b", kind="archive", name="archive", paths=["dist/*.tar.gz"])
    executor, rep = make(ws, BuildPlan(stages=[stage("b", none)]))
    assert await executor.run() is BuildState.FAILED
    assert "archive: no files match 'dist/*.tar.gz'" in rep.text


async def test_environment_reaches_the_step(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_SECRET_OF_AGENT", "leaked")
    script = (
        'echo "id=$CONVEYOR_BUILD_ID p=$PARAM s=$STAGE_VAR o=$OVERRIDE'
        ' x=${CONVEYOR_TEST_SECRET_OF_AGENT:-none}"'
    )
    step = sh("b1", script, environment={"STAGE_VAR": "sv", "OVERRIDE": "step"})
    plan = BuildPlan(stages=[stage("build", step)], environment={"PARAM": "pv", "OVERRIDE": "plan"})
    executor, rep = make(ws, plan, base_env={"CONVEYOR_BUILD_ID": "7", "OVERRIDE": "base"})
    assert await executor.run() is BuildState.SUCCEEDED
    assert "id=7 p=pv s=sv o=step x=none\n" in rep.text


async def test_output_without_trailing_newline_is_logged(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("b1", "printf 'no-newline'"), echo("b2", "next"))])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert "no-newline\n\x1b[1m==> [build] echo: next" in rep.text


async def test_partial_line_is_flushed_without_waiting_for_newline(ws: Path) -> None:
    plan = BuildPlan(stages=[stage("build", sh("b1", "printf 'prompt> '; sleep 1; echo done"))])
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.SUCCEEDED
    assert b"prompt> " in rep.chunks  # its own log call, well before "done"


async def test_reporter_error_propagates_and_kills_processes(ws: Path) -> None:
    plan = BuildPlan(
        stages=[
            stage("build", sh("b1", "sleep 300 & echo $! $$ > bg.pids; echo bo''om; sleep 300"))
        ]
    )
    executor, rep = make(ws, plan)
    rep.fail_on = b"boom"
    with pytest.raises(RuntimeError, match="log endpoint is down"):
        await asyncio.wait_for(executor.run(), 10)
    pids = read_pids(ws / "bg.pids")
    assert len(pids) == 2
    assert still_alive(pids) == []


async def test_stage_timeout_is_retried_with_the_stage(ws: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", sh("b1", "sleep 300", retry=5), timeout=0.4, retry=1)],
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.TIMED_OUT
    # The step's own retries do not apply to a stage timeout; the stage's retry does.
    assert rep.finished("b1") == [(StepState.TIMED_OUT, None, 1), (StepState.TIMED_OUT, None, 2)]
    assert rep.text.count("==> stage 'build' timed out after 0.4s") == 2


async def test_a_quick_double_forked_orphan_is_found_by_cookie_reading_only_new_processes(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step ends at once; its setsid'd grandchild was never seen as a descendant and
    is not in the step's process group: the cookie finds it. Only processes started
    since the step began have their environment read (the leftover scan stays cheap)."""
    read: list[int] = []
    real = process._environ_has

    def spy(pid: int, entry: bytes) -> bool:
        read.append(pid)
        return real(pid, entry)

    monkeypatch.setattr(process, "_environ_has", spy)
    output: list[bytes] = []

    async def sink(data: bytes) -> None:
        output.append(data)

    ws.mkdir()
    script = "(setsid sleep 300 & echo $! > orphan.pids)"
    proc = process.StepProcess(
        ["/bin/sh", "-c", script],
        cwd=ws,
        env={"PATH": os.environ.get("PATH", os.defpath)},
        output=sink,
        kill_grace=2.0,
    )
    # Older than the slack on the start times: never read.
    old = {
        p.pid
        for p in psutil.process_iter(["create_time"])
        if p.info["create_time"] < time.time() - 1
    }
    await proc.start()
    try:
        assert await proc.wait() == 0
    finally:
        await proc.close()
    [orphan] = read_pids(ws / "orphan.pids")
    assert proc.leftovers == 1 and gone(orphan)
    assert not set(read) & old  # older processes cannot carry the cookie: not read


def notify(key: str, notifier: str, stage: str) -> StepPlan:
    return StepPlan(
        key=key, stage=stage, kind="notify", name=f"notify: {notifier}", notifier=notifier
    )


async def test_notify_post_steps_are_left_to_the_controller(ws: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", sh("b1", "exit 3"))],
        post={
            "success": [notify("p-s0", "team-slack", "post.success")],
            "failure": [
                notify("p-f0", "team-slack", "post.failure"),
                echo("p-f1", "post-echo", stage="post.failure"),
            ],
            "always": [notify("p-a0", "audit", "post.always")],
        },
    )
    executor, rep = make(ws, plan)
    assert await executor.run() is BuildState.FAILED
    assert rep.ran() == ["b1", "p-f1"]
    for key in ("p-s0", "p-f0", "p-a0"):  # neither started, finished nor skipped
        assert [e for e in rep.events if e[1] == key] == []
    assert "notify:" not in rep.text and "team-slack" not in rep.text and "audit" not in rep.text
    assert "post-echo" in rep.text


def test_the_output_pipe_has_one_owner_under_uvloop(tmp_path: Path) -> None:
    """uvloop's connect_read_pipe closed a step's pipe twice (uvloop #763): a file that
    another thread opened in between got the freed number and was closed under its
    owner (an outbox file: EBADF, a build that never finished). Steps' output is read
    whole under uvloop, and a thread opening, writing and closing files meanwhile
    never sees its descriptor closed. (The race window is narrow: this passes with the
    old reader too most of the time; `strace -e close` shows the old reader's second
    close(2) returning EBADF, and a single close with PipeReader.)"""
    import threading

    import uvloop

    errors: list[OSError] = []
    stop = threading.Event()

    def churn() -> None:
        path = tmp_path / "canary"
        while not stop.is_set():
            fd = os.open(path, os.O_RDWR | os.O_CREAT)
            try:
                for _ in range(20):
                    os.write(fd, b"x")
                    os.fstat(fd)
            except OSError as exc:
                errors.append(exc)
                continue  # the number was closed under us (and maybe reused): leave it
            try:
                os.close(fd)
            except OSError as exc:
                errors.append(exc)

    output: list[bytes] = []

    async def sink(data: bytes) -> None:
        output.append(data)

    async def main() -> None:
        for i in range(60):
            proc = process.StepProcess(
                ["/bin/sh", "-c", f"echo step {i}"],
                cwd=tmp_path,
                env={"PATH": os.environ.get("PATH", os.defpath)},
                output=sink,
                kill_grace=2.0,
            )
            await proc.start()
            try:
                assert await proc.wait() == 0
            finally:
                await proc.close()
            del proc
            await asyncio.sleep(0)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        uvloop.run(main())
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert b"".join(output) == b"".join(f"step {i}\n".encode() for i in range(60))
