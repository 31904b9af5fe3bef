"""The agent's checkout of a build's commit: update the per-agent bare mirror of the
repository (``WORKDIR/mirrors/<hash>``), then a shallow checkout of exactly that
commit into the workspace. Progress and errors go to the build log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from conveyor import git
from conveyor.core.plan import CheckoutPlan

BOLD, RED, RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


async def checkout(
    plan: CheckoutPlan,
    workspace: Path,
    mirror_root: Path,
    log_line: Callable[[str], Awaitable[None]],
) -> bool:
    """Returns whether the workspace now holds ``plan.commit``."""
    where = f" ({plan.branch})" if plan.branch else ""
    await log_line(f"{BOLD}==> checkout {plan.url}{where} at {plan.commit[:12]}{RESET}")
    started = time.monotonic()
    try:
        mirror = await git.mirror(mirror_root, plan.url, plan.credential)
        await git.shallow_checkout(mirror, plan.url, plan.commit, workspace)
        head = (await git.run_git("rev-parse", "HEAD", cwd=workspace)).strip()
    except git.GitError as exc:
        await log_line(f"{RED}==> checkout failed: {exc}{RESET}")
        return False
    if head != plan.commit:
        await log_line(f"{RED}==> checkout failed: got {head}, expected {plan.commit}{RESET}")
        return False
    subject = f": {plan.subject}" if plan.subject else ""
    await log_line(f"==> at {head[:12]}{subject} ({time.monotonic() - started:.1f}s)")
    return True
