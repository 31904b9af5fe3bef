#!/usr/bin/env python3
"""SCM and config-as-code figures, in-process on SQLite with real git:

(a) agent checkout: first build of a repository (mirror clone + shallow checkout) vs a
    later build (mirror fetch + shallow checkout), for a repository of --commits commits;
(b) `config apply` of --jobs jobs (validate all + one transaction), and a re-apply
    that changes nothing;
(c) one trigger-loop pass over --jobs cron jobs (parsed-spec cache warm).

Run:  PYTHONPATH=src /work/venv/bin/python bench/scm.py [--commits N] [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from conveyor import git
from conveyor.controller.clock import utcnow
from conveyor.controller.config_apply import ConfigApplier
from conveyor.runtime import Runtime
from conveyor.settings import Settings

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@x",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@x",
}


def make_repo(root: Path, commits: int) -> tuple[str, str]:
    work = root / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=ENV)
    for i in range(commits):
        (work / f"file-{i % 50}.txt").write_text(f"{i}\n" * 2000)
        subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=ENV)
        subprocess.run(["git", "commit", "-qm", f"c{i}"], cwd=work, check=True, env=ENV)
    bare = root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=ENV)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    return bare.as_uri(), head


async def checkout_figures(root: Path, commits: int) -> None:
    url, head = make_repo(root, commits)
    mirrors = root / "mirrors"
    for label, n in (("first build (clone mirror)", 1), ("later build (fetch mirror)", 2)):
        start = time.perf_counter()
        mirror = await git.mirror(mirrors, url)
        await git.shallow_checkout(mirror, url, head, root / f"ws{n}")
        print(f"checkout, {label}, {commits} commits: {time.perf_counter() - start:.2f}s")


async def config_figures(root: Path, jobs: int) -> None:
    runtime = Runtime.build(Settings(home=root / "home"), utcnow)
    await runtime.prepare()
    files = {
        f"jobs/team/job-{i:04d}.yml": (
            f"name: team/job-{i:04d}\ntriggers: {{cron: 'H/15 * * * *'}}\n"
            "stages:\n  - name: b\n    steps:\n      - echo: hi\n"
        )
        for i in range(jobs)
    }
    applier = ConfigApplier(runtime.store, utcnow)
    for label in ("apply (all new)", "re-apply (unchanged)"):
        start = time.perf_counter()
        await applier.apply(files, "bench", None, "bench")
        print(f"config {label}, {jobs} jobs: {time.perf_counter() - start:.2f}s")
    assert runtime.triggers is not None
    await runtime.lease.run_once()
    await runtime.triggers.run_once()  # warms the parsed-spec cache
    start = time.perf_counter()
    await runtime.triggers.run_once()
    print(f"trigger-loop pass, {jobs} cron jobs: {time.perf_counter() - start:.3f}s")
    await runtime.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await checkout_figures(Path(tmp) / "git", args.commits)
        await config_figures(Path(tmp) / "cfg", args.jobs)


if __name__ == "__main__":
    asyncio.run(main())
