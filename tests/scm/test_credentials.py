"""Credentials by id: the default hook reads CONVEYOR_SCM_CREDENTIAL_<ID> and sends it
to a real HTTP git server that requires Basic auth, never on git's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import git
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
