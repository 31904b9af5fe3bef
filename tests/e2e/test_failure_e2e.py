"""Scratch: failure analysis with a real controller and agents (not part of the repo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.test_pipeline_e2e import Cluster, _apply
from tests.harness import wait_until

SPEC = """
name: {name}
stages:
  - name: build
    steps:
      - sh: |
{script}
"""


def _run(cluster: Cluster, tmp_path: Path, name: str, script: str) -> dict[str, Any]:
    controller, _ = cluster
    body = "\n".join("          " + line for line in script.splitlines())
    _apply(controller, tmp_path, SPEC.format(name=name, script=body))
    controller.cli("build", "start", name, "--follow")
    found: dict[str, Any] = {}

    def analysed() -> bool:
        with controller.client() as c:
            found.update(c.get(f"/api/v1/jobs/{name}/builds/1").json())
        return found.get("failure_category") is not None or found.get("state") == "succeeded"

    wait_until(analysed, 20, what="failure analysis")
    return found


def test_real_failures_are_classified(cluster: Cluster, tmp_path: Path) -> None:
    build = _run(cluster, tmp_path, "cc", 'echo "main.c:7:5: error: boom" >&2\nexit 1')
    assert build["failure_category"] == "compile", build
    assert build["cause"] == "compile error in main.c:7: boom"
    build = _run(
        cluster,
        tmp_path,
        "oom",
        "echo loading\n"
        "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'\n"
        "echo never",
    )
    assert build["failure_category"] == "out_of_memory", build
    print(build["cause"])
    build = _run(cluster, tmp_path, "ok", "echo fine")
    assert build["state"] == "succeeded" and build["failure_category"] is None
