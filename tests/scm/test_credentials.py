"""Credentials by id: the default hook reads CONVEYOR_SCM_CREDENTIAL_<ID> and sends it
to a real HTTP git server that requires Basic auth, never on git's command line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from conveyor import git
from conveyor.agent.checkout import CheckoutFailed, checkout_auth
from conveyor.core.plan import CheckoutPlan
from tests.scm.gitserver import GitHttp, Repo


async def test_http_credential_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "srv", "private")
    sha = repo.create({"README": "secret stuff"}, "one")
    server = GitHttp(tmp_path / "srv", basic_auth="ci:tok3n").start()
    try:
        url = server.url(repo)
        with pytest.raises(git.GitError):  # no credential: refused, and git never prompts
            await git.ls_remote(url)
        with pytest.raises(git.GitError):
            await git.ls_remote(url, "deploy-key")  # an id whose variable is not set
        monkeypatch.setenv("CONVEYOR_SCM_CREDENTIAL_DEPLOY_KEY", "ci:tok3n")
        assert (await git.ls_remote(url, "deploy-key"))["refs/heads/main"] == sha
        mirror = await git.mirror(tmp_path / "mirrors", url, "deploy-key")
        assert (await git.commit_info(mirror, sha)).subject == "one"
        # The secret travels in the environment, not in argv (visible in `ps`).
        env = git.git_env("deploy-key")
        assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
        assert "tok3n" not in " ".join(["git", "ls-remote", url])
    finally:
        server.stop()


def test_credential_ids_map_to_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_SCM_CREDENTIAL_SHOP_DEPLOY_KEY_SSH_KEY", "/keys/id")
    env = git.env_credentials("shop-deploy.key")
    assert env == {"GIT_SSH_COMMAND": "ssh -i /keys/id -o IdentitiesOnly=yes -o BatchMode=yes"}
    assert git.env_credentials(None) == {}


async def test_stored_values_as_git_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token (``text``) and a username/password both log in over HTTP; neither is in
    argv or the mirror's config; an SSH key is a 0600 file only while git runs."""
    repo = Repo(tmp_path / "srv", "private")
    sha = repo.create({"README": "x"}, "one")
    server = GitHttp(tmp_path / "srv", basic_auth=f"{git.TOKEN_USERNAME}:tok-123").start()
    try:
        url = server.url(repo)
        token = git.auth_from_fields("t", {"kind": "text", "value": "tok-123"})
        assert (await git.ls_remote(url, token))["refs/heads/main"] == sha
        assert "tok-123" not in repr(token)
        wrong = git.auth_from_fields(
            "u", {"kind": "username_password", "username": "x", "password": "nope"}
        )
        with pytest.raises(git.GitError):
            await git.ls_remote(url, wrong)
        path = await git.mirror(tmp_path / "mirrors", url, token)
        assert "tok-123" not in (path / "config").read_text()
    finally:
        server.stop()
    with pytest.raises(git.CredentialKindError, match="file credential"):
        git.auth_from_fields("k", {"kind": "file", "value": "x"})

    # SSH: git runs `ssh -i KEYFILE`; a stand-in ssh shows the file while git runs.
    seen = tmp_path / "seen"
    fake_ssh = tmp_path / "bin" / "ssh"
    fake_ssh.parent.mkdir()
    fake_ssh.write_text(
        "#!/bin/sh\n"
        f'key="$2"; stat -c %a "$key" > {seen}; cat "$key" >> {seen}; echo "$key" >> {seen}\n'
        "exit 1\n"
    )
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_ssh.parent}:{os.environ['PATH']}")
    key = git.auth_from_fields("k", {"kind": "ssh_key", "value": "-----KEY-----"})
    with pytest.raises(git.GitError):
        await git.ls_remote("ssh://git@127.0.0.1/r.git", key)
    mode, body, key_path = seen.read_text().splitlines()
    assert (mode, body) == ("600", "-----KEY-----")
    assert not await asyncio.to_thread(Path(key_path).exists)  # removed when git ended


def test_agent_checkout_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the agent fetches with: the stored value the controller sent; else the
    deprecated variable of its own environment; else a failure that names the id."""
    plan = CheckoutPlan(url="https://git.example.org/r.git", commit="a" * 40, credential="c/x")
    sent = {"c/x": {"kind": "username_password", "username": "u", "password": "p"}}
    assert checkout_auth(plan, sent) == git.GitAuth(username="u", password="p")
    gone = {"c/x": {"error": "credential 'c/x' does not exist (deleted?)"}}
    with pytest.raises(CheckoutFailed, match=r"'c/x' does not exist .*needs it"):
        checkout_auth(plan, gone)
    with pytest.raises(CheckoutFailed, match="file credential"):
        checkout_auth(plan, {"c/x": {"kind": "file", "value": "v"}})
    monkeypatch.setenv("CONVEYOR_SCM_CREDENTIAL_C_X", "u:p")
    assert checkout_auth(plan, gone) == "c/x"  # resolved from the environment by git_env
    assert checkout_auth(plan.model_copy(update={"credential": None}), {}) is None
