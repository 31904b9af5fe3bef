"""Bad input through the real CLI: a clear message, a non-zero exit, nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Controller


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("cli") / "home").start()
    try:
        yield c
    finally:
        c.stop()


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "conveyor.yml"
    path.write_text(text)
    return str(path)


def _no_jobs(controller: Controller) -> bool:
    with controller.client() as c:
        return c.get("/api/v1/jobs").json() == []


def test_malformed_yaml(controller: Controller, tmp_path: Path) -> None:
    run = controller.cli("job", "apply", "-f", _write(tmp_path, "name: x\nstages: [\n"))
    assert run.returncode == 2
    assert "conveyor.yml:" in run.stderr and "invalid YAML" in run.stderr
    assert "Traceback" not in run.stderr
    assert _no_jobs(controller)


def test_unknown_step_type(controller: Controller, tmp_path: Path) -> None:
    spec = "name: x\nstages:\n  - name: a\n    steps:\n      - shh: make\n"
    run = controller.cli("job", "apply", "-f", _write(tmp_path, spec))
    assert run.returncode == 2
    assert "conveyor.yml:5: stages[0].steps[0]: unknown step type 'shh'" in run.stderr
    assert _no_jobs(controller)


def test_missing_file(controller: Controller, tmp_path: Path) -> None:
    run = controller.cli("job", "apply", "-f", str(tmp_path / "nope.yml"))
    assert run.returncode == 2 and "cannot read" in run.stderr


def test_unknown_job_and_missing_parameter(controller: Controller, tmp_path: Path) -> None:
    run = controller.cli("build", "start", "does-not-exist")
    assert run.returncode == 2 and "job 'does-not-exist' not found" in run.stderr
    spec = (
        "name: needs-param\nparameters:\n  - name: WHO\n    required: true\n"
        "stages:\n  - name: a\n    steps:\n      - echo: hi\n"
    )
    assert controller.cli("job", "apply", "-f", _write(tmp_path, spec)).returncode == 0
    run = controller.cli("build", "start", "needs-param")
    assert run.returncode == 2 and "WHO" in run.stderr and "required" in run.stderr
    run = controller.cli("build", "start", "needs-param", "-p", "no-equals-sign")
    assert run.returncode == 2 and "KEY=VALUE" in run.stderr
    with controller.client() as c:
        assert c.get("/api/v1/builds").json()["items"] == []


def test_wrong_token_and_unreachable_server(controller: Controller) -> None:
    env = {**os.environ, "CONVEYOR_URL": controller.url, "CONVEYOR_TOKEN": "wrong"}
    run = subprocess.run(
        [sys.executable, "-m", "conveyor", "job", "list"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "invalid, expired or revoked token" in run.stderr
    env["CONVEYOR_URL"] = "http://127.0.0.1:1"
    run = subprocess.run(
        [sys.executable, "-m", "conveyor", "job", "list"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "cannot reach" in run.stderr
    assert "Traceback" not in run.stderr


def test_server_with_a_bad_database_url(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "conveyor", "server", "--home", str(tmp_path),
         "--database", "bogus://x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "unsupported database URL" in run.stderr and "Traceback" not in run.stderr
