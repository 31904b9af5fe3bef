"""Git, as subprocesses: ``ls-remote``, a bare mirror cache, commit details, and a
shallow checkout of one exact commit. Used by the controller (polling, reading a
pipeline from its repository) and by agents (checking out a build's commit).

Credentials: a job's ``scm.credential`` is an id, never a secret. It is resolved
on the process that runs git by :data:`credential_resolver` (replaceable: the
credentials store plugs in there). The default resolver reads environment
variables, so that no secret is ever stored in a job spec or a build plan:

* ``CONVEYOR_SCM_CREDENTIAL_<ID>`` = ``user:token`` for HTTP(S) (sent as a Basic
  ``Authorization`` header through git's ``GIT_CONFIG_*`` variables, never argv);
* ``CONVEYOR_SCM_CREDENTIAL_<ID>_SSH_KEY`` = path of a private key for SSH.

``<ID>`` is the id upper-cased with every other character than A-Z0-9 as ``_``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conveyor.core.scm import mirror_key

GIT_TIMEOUT = 300.0
_locks: dict[str, asyncio.Lock] = {}


class GitError(RuntimeError):
    """A git command failed; the message carries git's own error text."""


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    email: str
    message: str  # full message
    committed_at: str  # ISO 8601

    @property
    def subject(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


def _env_name(credential: str) -> str:
    return "CONVEYOR_SCM_CREDENTIAL_" + re.sub(r"[^A-Z0-9]", "_", credential.upper())


def env_credentials(credential: str | None) -> dict[str, str]:
    """The default resolver: git environment for a credential id, from env variables."""
    if not credential:
        return {}
    name = _env_name(credential)
    out: dict[str, str] = {}
    secret = os.environ.get(name)
    if secret:
        header = "Authorization: Basic " + base64.b64encode(secret.encode()).decode()
        out.update(
            GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader", GIT_CONFIG_VALUE_0=header
        )
    key = os.environ.get(name + "_SSH_KEY")
    if key:
        out["GIT_SSH_COMMAND"] = f"ssh -i {shlex.quote(key)} -o IdentitiesOnly=yes -o BatchMode=yes"
    return out


#: credential id -> extra environment for git. Replace to plug in a credentials store.
credential_resolver: Callable[[str | None], dict[str, str]] = env_credentials


def git_env(credential: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never wait for a password on a terminal
        GIT_ASKPASS="true",
        LC_ALL="C",
    )
    env.update(credential_resolver(credential))
    return env


async def run_git(
    *args: str,
    cwd: Path | None = None,
    credential: str | None = None,
    timeout: float = GIT_TIMEOUT,
) -> str:
    if shutil.which("git") is None:
        raise GitError("git is not installed on this machine")
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_env(credential),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]} timed out after {timeout:g}s") from None
    except asyncio.CancelledError:  # a cancelled build: leave no git behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise GitError(f"git {args[0]} failed: {text[-2000:]}")
    return out.decode(errors="replace")


async def ls_remote(url: str, credential: str | None = None) -> dict[str, str]:
    """Every ref of a remote repository -> its commit (``refs/heads/main`` -> sha)."""
    out = await run_git("ls-remote", "--heads", "--tags", url, credential=credential, timeout=60)
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.endswith("^{}"):  # a peeled annotated tag: the commit it points at wins
            refs[ref[:-3]] = sha
        elif ref not in refs:
            refs[ref] = sha
    return refs


def branches_of(refs: dict[str, str]) -> dict[str, str]:
    return {
        r.removeprefix("refs/heads/"): s for r, s in refs.items() if r.startswith("refs/heads/")
    }


async def mirror(root: Path, url: str, credential: str | None = None) -> Path:
    """Create or update the bare mirror of ``url`` under ``root`` and return its path.
    One fetch at a time per mirror within this process."""
    path = root / mirror_key(url)
    lock = _locks.setdefault(str(path), asyncio.Lock())
    async with lock:
        if await asyncio.to_thread((path / "HEAD").exists):
            await run_git("remote", "set-url", "origin", url, cwd=path)
            await run_git("fetch", "--prune", "--force", "origin", cwd=path, credential=credential)
        else:
            await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
            partial = root / f".{path.name}.partial"
            await asyncio.to_thread(shutil.rmtree, partial, ignore_errors=True)
            await run_git("clone", "--mirror", "--quiet", url, str(partial), credential=credential)
            # Checkouts fetch one exact commit from here, which may be no branch tip.
            await run_git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=partial)
            await asyncio.to_thread(partial.rename, path)
    return path


async def resolve(mirror_path: Path, ref: str) -> str:
    out = await run_git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=mirror_path)
    return out.strip()


async def commit_info(mirror_path: Path, sha: str) -> CommitInfo:
    out = await run_git(
        "show", "-s", "--format=%H%x00%an%x00%ae%x00%cI%x00%B", sha, cwd=mirror_path
    )
    full, author, email, date, message = out.split("\x00", 4)
    return CommitInfo(
        sha=full.strip(), author=author, email=email, committed_at=date, message=message.strip()
    )


async def read_file(mirror_path: Path, sha: str, path: str) -> str:
    try:
        return await run_git("show", f"{sha}:{path}", cwd=mirror_path)
    except GitError as exc:
        raise GitError(f"{path} not found at commit {sha[:12]}: {exc}") from None


async def shallow_checkout(mirror_path: Path, url: str, sha: str, workspace: Path) -> None:
    """Check out exactly ``sha`` into ``workspace`` with history depth 1, fetched from
    the local mirror (fast, no network); ``origin`` then points at the real URL."""
    await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
    await run_git("init", "--quiet", str(workspace))
    # file:// so that --depth applies (a plain path would copy the whole history).
    source = (await asyncio.to_thread(mirror_path.resolve)).as_uri()
    await run_git("fetch", "--quiet", "--depth", "1", source, sha, cwd=workspace)
    await run_git("checkout", "--quiet", "--force", "--detach", "FETCH_HEAD", cwd=workspace)
    await run_git("remote", "add", "origin", url, cwd=workspace)
