"""The agent's checkout (real git, file:// repository): exact commit (also one that is
no longer a branch tip) from a per-agent mirror; a failed checkout fails the build,
skips its stages and runs post.failure."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.agent.executor import BuildContext, BuildExecutor
from conveyor.core.plan import BuildPlan, CheckoutPlan
from conveyor.core.scm import mirror_key
from conveyor.core.states import BuildState, StepState
from tests.scm.gitserver import Repo, git
from tests.unit.test_executor import FakeReporter, sh, stage


def context(tmp_path: Path, plan: BuildPlan, build_id: int) -> BuildContext:
    workspace = tmp_path / "agent" / "workspace" / f"job-{build_id}"
    return BuildContext(
        build_id=build_id,
        plan=plan,
        workspace=workspace,
        base_env={"PATH": os.environ["PATH"]},
        mirror_root=tmp_path / "agent" / "mirrors",
    )


async def test_checks_out_the_exact_commit_through_the_mirror(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "srv", "app")
    old = repo.create({"v.txt": "old\n"}, "old")
    repo.commit({"v.txt": "new\n"}, "new")
    plan = BuildPlan(
        stages=[
            stage("build", sh("s1", "cat v.txt; git rev-parse HEAD; git rev-list --count HEAD"))
        ],
        checkout=CheckoutPlan(url=repo.file_url, commit=old, branch="main", subject="old"),
    )
    reporter = FakeReporter()
    assert await BuildExecutor(context(tmp_path, plan, 1), reporter).run() == BuildState.SUCCEEDED
    lines = reporter.text.splitlines()
    assert any("==> checkout " in line and old[:12] in line for line in lines)
    assert "old" in lines and old in lines
    assert "1" in lines  # shallow: one commit of history
    mirror = tmp_path / "agent" / "mirrors" / mirror_key(repo.file_url)
    assert (mirror / "HEAD").exists()  # the per-agent bare mirror

    # A second build fetches into the same mirror (no new clone) and gets its commit.
    newer = repo.commit({"v.txt": "newer\n"}, "newer")
    inode = (mirror / "objects").stat().st_ino
    plan2 = plan.model_copy(update={"checkout": plan.checkout.model_copy(update={"commit": newer})})  # type: ignore[union-attr]
    reporter2 = FakeReporter()
    assert await BuildExecutor(context(tmp_path, plan2, 2), reporter2).run() == BuildState.SUCCEEDED
    assert "newer" in reporter2.text.splitlines()
    assert (mirror / "objects").stat().st_ino == inode
    assert git("rev-parse", "HEAD", cwd=tmp_path / "agent" / "workspace" / "job-2") == newer


async def test_a_failed_checkout_fails_the_build_and_runs_post_failure(tmp_path: Path) -> None:
    plan = BuildPlan(
        stages=[stage("build", sh("s1", "echo never"))],
        post={"failure": [sh("p1", "echo post-failure ran", stage="post.failure")]},
        checkout=CheckoutPlan(url=(tmp_path / "missing.git").as_uri(), commit="a" * 40),
    )
    reporter = FakeReporter()
    assert await BuildExecutor(context(tmp_path, plan, 3), reporter).run() == BuildState.FAILED
    assert "==> checkout failed: git clone failed" in reporter.text
    assert reporter.finished("s1") == [(StepState.SKIPPED, None, 0)]
    assert "post-failure ran" in reporter.text


async def test_a_build_cancelled_before_checkout_never_checks_out(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "srv", "app")
    head = repo.create({"v.txt": "x\n"}, "one")
    plan = BuildPlan(
        stages=[stage("build", sh("s1", "echo never"))],
        checkout=CheckoutPlan(url=repo.file_url, commit=head),
    )
    reporter = FakeReporter()
    executor = BuildExecutor(context(tmp_path, plan, 4), reporter)
    executor.cancel()
    assert await executor.run() == BuildState.CANCELLED
    assert "checkout" not in reporter.text
    assert not (tmp_path / "agent" / "mirrors").exists()
