"""Reading a config repository at a commit, and the leader loop that keeps the
instance in sync with it (on a schedule, or at once when a webhook says it changed)."""

from __future__ import annotations

import asyncio
import io
import tarfile
from datetime import datetime
from pathlib import Path

import structlog

from conveyor import git
from conveyor.controller.clock import Clock
from conveyor.controller.config_apply import ApplyResult, ConfigApplier
from conveyor.controller.leader import LeaderLease
from conveyor.controller.scm import ScmBuilds, ScmCredentialUnavailable
from conveyor.errors import Conflict, InvalidInput

log = structlog.get_logger(__name__)


async def read_repo_files(
    mirror_root: Path, url: str, ref: str, credential: git.Credential = None
) -> tuple[dict[str, str], str]:
    """The text files of ``ref`` in a repository (through the mirror cache), and the
    commit they come from."""
    mirror = await git.mirror(mirror_root, url, credential)
    sha = await git.resolve(mirror, ref if ref.startswith("refs/") else f"refs/heads/{ref}")
    proc_out = await _archive(mirror, sha)
    files: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(proc_out)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith((".yml", ".yaml")):
                data = tar.extractfile(member)
                if data is not None:
                    files[member.name] = data.read().decode("utf-8", "replace")
    return files, sha


async def _archive(mirror: Path, sha: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "archive",
        "--format=tar",
        sha,
        cwd=mirror,
        env=git.git_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), git.GIT_TIMEOUT)
    if proc.returncode != 0:
        raise git.GitError(f"git archive failed: {err.decode(errors='replace').strip()}")
    return out


class ConfigSync:
    """Keeps the instance in sync with a config repository (leader only): on a
    schedule, and at once when a webhook says the repository changed."""

    def __init__(
        self,
        applier: ConfigApplier,
        lease: LeaderLease,
        mirror_root: Path,
        repo: str | None,
        ref: str,
        interval: float | None,
        clock: Clock,
        credential: str | None = None,
        scm: ScmBuilds | None = None,
    ) -> None:
        self.applier = applier
        self.lease = lease
        self.mirror_root = mirror_root
        self.repo = repo
        self.ref = ref
        self.interval = interval
        self.clock = clock
        self.credential = credential  # a stored credential's id (setting config_repo_credential)
        self.scm = scm  # resolves it
        self._last: datetime | None = None
        self.last_error: str | None = None

    async def run_once(self, force: bool = False) -> ApplyResult | None:
        """The scheduled sync (leader only); ``force``: now, on any controller (a
        webhook said the repository changed; the apply is atomic and skips a commit
        already applied)."""
        if self.repo is None or not (self.lease.is_leader or force):
            return None
        now = self.clock()
        due = self.interval is not None and (
            self._last is None or (now - self._last).total_seconds() >= self.interval
        )
        if not (due or force):
            return None
        self._last = now
        try:
            auth: git.Credential = self.credential
            if self.scm is not None:
                auth = await self.scm.auth_for(self.repo, self.credential)
            files, sha = await read_repo_files(self.mirror_root, self.repo, self.ref, auth)
            if sha == await self.applier.last_commit(self.repo):
                return None
            result = await self.applier.apply(files, self.repo, sha, "config-sync")
        except (git.GitError, InvalidInput, Conflict, ScmCredentialUnavailable) as exc:
            self.last_error = str(exc) + "".join(f"\n  {e}" for e in getattr(exc, "errors", []))
            log.warning("config.sync_failed", repo=self.repo, error=self.last_error)
            return None
        self.last_error = None
        return result
