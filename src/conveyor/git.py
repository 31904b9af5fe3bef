"""Git, as subprocesses: ``ls-remote``, a bare mirror cache, commit details, and a
shallow checkout of one exact commit. Used by the controller (polling, reading a
pipeline from its repository) and by agents (checking out a build's commit).

Credentials: a job's ``scm.credential`` is an id, never a secret. Callers that
hold the credentials store resolve the id to a :class:`GitAuth` (the controller
from its vault, the agent from the values the controller sent with the build) and
pass that. A plain id is resolved by :data:`credential_resolver`, whose default
reads environment variables of this process (deprecated, kept for existing
set-ups):

* ``CONVEYOR_SCM_CREDENTIAL_<ID>`` = ``user:token`` for HTTP(S);
* ``CONVEYOR_SCM_CREDENTIAL_<ID>_SSH_KEY`` = path of a private key for SSH.

``<ID>`` is the id upper-cased with every other character than A-Z0-9 as ``_``.

Either way the secret reaches git only through its environment: an HTTP(S)
password or token as a Basic ``Authorization`` header in ``http.extraHeader``
given by ``GIT_CONFIG_*`` variables (never in the URL, never on the command line,
never in a ``.git/config``); an SSH key as a 0600 file in a private temporary
folder outside any workspace, removed when the git command ends.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@dataclass(frozen=True)
class GitAuth:
    """A resolved SCM credential: secret values, to hand to git and nothing else."""

    username: str | None = None  # HTTP(S) Basic user name
    password: str | None = None  # HTTP(S) password or token
    ssh_key: str | None = None  # SSH private key text

    def __repr__(self) -> str:  # never print a secret by accident
        return f"GitAuth(username={self.username!r}, password=***, ssh_key=***)"


#: The user name sent with a token (a ``text`` credential): GitHub's name for app
#: tokens; GitLab, Gitea and GitHub accept any user name with a personal token.
TOKEN_USERNAME = "x-access-token"


class CredentialKindError(ValueError):
    """A stored credential of a kind git cannot use (message says which kinds work)."""


def auth_from_fields(cred_id: str, fields: dict[str, str]) -> GitAuth:
    """A credentials-store value (``{"kind": ..., ...}``) as git authentication:
    ``username_password`` and ``text`` (a token) for HTTP(S), ``ssh_key`` for SSH."""
    kind = fields.get("kind", "text")
    if kind == "username_password":
        return GitAuth(username=fields.get("username", ""), password=fields.get("password", ""))
    if kind == "text":
        return GitAuth(username=TOKEN_USERNAME, password=fields.get("value", ""))
    if kind == "ssh_key":
        return GitAuth(ssh_key=fields.get("value", ""))
    raise CredentialKindError(
        f"credential {cred_id!r} is a {kind} credential; a repository needs a "
        "username_password or text (token) credential for HTTP(S), or an ssh_key for SSH"
    )


def _basic_header(user_colon_password: str) -> dict[str, str]:
    header = "Authorization: Basic " + base64.b64encode(user_colon_password.encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": header,
    }


def _ssh_command(key_path: str) -> str:
    return f"ssh -i {shlex.quote(key_path)} -o IdentitiesOnly=yes -o BatchMode=yes"


def env_name(credential: str) -> str:
    """The (deprecated) environment variable holding a credential id's ``user:token``."""
    return _env_name(credential)


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
        out.update(_basic_header(secret))
    key = os.environ.get(name + "_SSH_KEY")
    if key:
        out["GIT_SSH_COMMAND"] = _ssh_command(key)
    return out


def has_env_credential(credential: str) -> bool:
    name = _env_name(credential)
    return bool(os.environ.get(name) or os.environ.get(name + "_SSH_KEY"))


#: credential id -> extra environment for git. Replace to plug in a credentials store.
credential_resolver: Callable[[str | None], dict[str, str]] = env_credentials


#: A credential for git: an id (resolved by :data:`credential_resolver`) or resolved.
Credential = str | GitAuth | None


def git_env(credential: Credential = None, ssh_key_file: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never wait for a password on a terminal
        GIT_ASKPASS="true",
        LC_ALL="C",
    )
    if isinstance(credential, GitAuth):
        if credential.password is not None:
            env.update(_basic_header(f"{credential.username or ''}:{credential.password}"))
        if ssh_key_file is not None:
            env["GIT_SSH_COMMAND"] = _ssh_command(ssh_key_file)
    else:
        env.update(credential_resolver(credential))
    return env


@contextmanager
def _ssh_key_file(credential: Credential) -> Iterator[str | None]:
    """An SSH key credential as a 0600 file in a 0700 temporary folder (outside any
    workspace), removed on the way out."""
    if not isinstance(credential, GitAuth) or credential.ssh_key is None:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="conveyor-git-")  # mode 0700
    try:
        path = os.path.join(folder, "key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            key = credential.ssh_key
            fh.write(key if key.endswith("\n") else key + "\n")  # ssh wants the newline
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run_git(
    *args: str,
    cwd: Path | None = None,
    credential: Credential = None,
    timeout: float = GIT_TIMEOUT,
) -> str:
    if shutil.which("git") is None:
        raise GitError("git is not installed on this machine")
    with _ssh_key_file(credential) as key_file:
        return await _run_git(args, cwd, git_env(credential, key_file), timeout)


async def _run_git(
    args: tuple[str, ...], cwd: Path | None, env: dict[str, str], timeout: float
) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
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


async def ls_remote(url: str, credential: Credential = None) -> dict[str, str]:
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


async def mirror(root: Path, url: str, credential: Credential = None) -> Path:
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
