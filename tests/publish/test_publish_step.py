"""The publish step inside the executor (real nginx, recording reporter): log lines,
the step's result, and what is reported as published, also when a later upload fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.core.plan import BuildPlan, StepPlan
from conveyor.core.states import BuildState, StepState
from tests.publish.servers import DavServer
from tests.unit.test_executor import FakeReporter, make, stage


class Recorder(FakeReporter):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        self.published.append((step_key, publication))


def publish_step(key: str, **spec: Any) -> StepPlan:
    return StepPlan(key=key, stage="release", kind="publish", name="publish", publish=spec)


async def test_what_reached_the_repository_is_reported_before_the_failure(
    tmp_path: Path, dav: DavServer
) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "ok.bin").write_bytes(b"ok")
    (ws / "sub" / "x.bin").write_bytes(b"x")
    (dav.root / "repo" / "sub").write_text("a file where a folder is needed")
    plan = BuildPlan(
        stages=[
            stage(
                "release",
                publish_step(
                    "0.0",
                    type="http",
                    url=f"{dav.url}/repo/",
                    files=["ok.bin", "sub/x.bin"],
                    keep_paths=True,
                ),
            )
        ]
    )
    executor, _ = make(ws, plan)
    reporter = Recorder()
    executor.reporter = reporter
    assert await executor.run() == BuildState.FAILED
    assert reporter.finished("0.0")[-1][0] == StepState.FAILED
    assert [(k, p["file"], p["url"]) for k, p in reporter.published] == [
        ("0.0", "ok.bin", f"{dav.url}/repo/ok.bin")
    ]
    log = reporter.text
    assert f"publish: ok.bin -> {dav.url}/repo/ok.bin (2 B)" in log
    assert f"publish: PUT {dav.url}/repo/sub/x.bin failed: " in log
    assert "==> step failed" in log


async def test_a_publish_step_that_succeeds(tmp_path: Path, dav: DavServer) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("n")
    plan = BuildPlan(
        stages=[
            stage(
                "release",
                publish_step(
                    "0.0",
                    type="http",
                    url="${REPO}/repo/",
                    files=["notes.txt"],
                ),
            )
        ],
        environment={"REPO": dav.url},
    )
    executor, _ = make(ws, plan)
    reporter = Recorder()
    executor.reporter = reporter
    assert await executor.run() == BuildState.SUCCEEDED
    assert (dav.root / "repo" / "notes.txt").read_text() == "n"
    assert reporter.published[0][1]["repository"] == "http"


async def test_an_unexpected_error_fails_the_step_not_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside the uploaders (here: a file that cannot be read,
    injected at our own seam) ends as a failed step with the reason in the log."""
    from conveyor.agent import publish as publish_module

    async def unreadable(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", "dist/app.bin")

    monkeypatch.setattr(publish_module, "publish", unreadable)
    ws = tmp_path / "ws"
    ws.mkdir()
    plan = BuildPlan(
        stages=[
            stage(
                "release",
                publish_step("0.0", type="http", url="http://127.0.0.1:9/r/", files=["x"]),
                StepPlan(key="0.1", stage="release", kind="echo", name="echo", message="next"),
            )
        ]
    )
    executor, _ = make(ws, plan)
    reporter = Recorder()
    executor.reporter = reporter
    assert await executor.run() == BuildState.FAILED
    assert "publish: failed: PermissionError: [Errno 13] Permission denied" in reporter.text
    assert reporter.finished("0.1") == [(StepState.SKIPPED, None, 0)]
