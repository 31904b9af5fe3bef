"""`conveyor config apply|diff|export` and `conveyor job rollback` against a real
controller, with the configuration in a real git repository; the leader keeps the
config repository synced when a signed webhook says it changed."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from tests.harness import Controller, wait_until
from tests.scm.conftest import WEBHOOK_SECRET
from tests.scm.gitserver import Repo
from tests.scm.test_config_as_code import fifty_jobs, job_yaml


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*.yml"))
        if ".git" not in p.parts
    }


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Controller:
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("CONVEYOR_CONFIG_REPO", (tmp_path / "srv" / "config.git").as_uri())
    monkeypatch.setenv("CONVEYOR_TRIGGER_INTERVAL", "0.5")
    c = Controller(tmp_path / "controller").start()
    yield c  # type: ignore[misc]
    c.stop()


def test_config_cli_from_a_git_repository(controller: Controller, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "srv", "config")
    sha = repo.create(fifty_jobs(bad=12), "fifty jobs, one broken")

    bad = controller.cli("config", "apply", str(repo.work))
    assert bad.returncode == 2
    assert "jobs/team/job-12.yml:6: stages[0].steps[0]: unknown step type 'make'" in bad.stderr
    assert "nothing was applied" in bad.stderr
    assert "Traceback" not in bad.stderr
    with controller.client() as c:
        assert c.get("/api/v1/jobs").json() == []

    sha = repo.commit(fifty_jobs(), "fix job-12")
    good = controller.cli("config", "apply", str(repo.work))
    assert good.returncode == 0, good.stderr
    assert f"at {sha[:12]}" in good.stdout and "51 create" in good.stdout
    with controller.client() as c:
        commits = c.get("/api/v1/jobs/team/job-12/commits").json()
    assert commits["1"]["commit"] == sha and commits["1"]["file"] == "jobs/team/job-12.yml"

    # export -> apply -> export: byte-identical files, and the same as the repository's.
    first, second = tmp_path / "export-1", tmp_path / "export-2"
    assert controller.cli("config", "export", str(first)).returncode == 0
    expected = {k: v for k, v in tree(repo.work).items()}
    # ... plus the first admin's grant, which is configuration too (grants/).
    admin = b"user: admin\ngrants:\n- role: admin\n  pattern: '*'\n"
    assert tree(first) == {**expected, "grants/admin.yml": admin}
    applied = controller.cli("config", "apply", str(first))
    assert applied.returncode == 0 and "52 unchanged" in applied.stdout
    assert controller.cli("config", "export", str(second)).returncode == 0
    assert tree(second) == tree(first)

    # diff: exit 0 when nothing would change, 1 (and the list) when something would.
    assert controller.cli("config", "diff", str(repo.work)).returncode == 0
    (repo.work / "jobs/team/job-03.yml").write_text(job_yaml("team/job-03", "edited"))
    diff = controller.cli("config", "diff", str(repo.work))
    assert diff.returncode == 1 and "update job team/job-03" in diff.stdout


def test_apply_from_repo_url_rollback_and_sync_on_webhook(
    controller: Controller, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "config")
    first = repo.create({"jobs/svc.yml": job_yaml("svc", "one")}, "svc one")
    applied = controller.cli("config", "apply", "--repo", repo.file_url, "--ref", "main")
    assert applied.returncode == 0, applied.stderr
    assert f"at {first[:12]}" in applied.stdout
    # --credential names a stored credential the controller fetches with: an unknown one is
    # refused by name; with a folder (read by the CLI, not fetched) it makes no sense.
    unknown = controller.cli("config", "diff", "--repo", repo.file_url, "--credential", "no/such")
    assert unknown.returncode == 2 and "no/such" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr
    misplaced = controller.cli("config", "apply", str(repo.work), "--credential", "x")
    assert misplaced.returncode != 0 and "--credential goes with --repo" in misplaced.stderr

    # A push to the config repository, announced by a signed webhook, is applied.
    second = repo.commit({"jobs/svc.yml": job_yaml("svc", "two")}, "svc two")
    body = json.dumps(
        {"repository": repo.file_url, "ref": "refs/heads/main", "commit": second}
    ).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    with controller.client() as c:
        answer = c.post(
            "/api/v1/webhooks/generic", content=body, headers={"X-Conveyor-Signature": signature}
        )
        assert answer.status_code == 200 and answer.json()["outcome"] == "accepted"
        assert "config repository changed" in answer.json()["reason"]
        job = wait_until(lambda: (j := c.get("/api/v1/jobs/svc").json())["version"] == 2 and j, 30)
        assert "echo: two" in job["spec"]
        assert c.get("/api/v1/jobs/svc/commits").json()["2"]["commit"] == second
        refused = c.put("/api/v1/jobs/svc", json={"spec": job_yaml("svc", "by hand")})
        assert refused.status_code == 409 and "jobs/svc.yml" in refused.json()["detail"]

    # Rollback through the CLI: refused for a managed job, unless forced by an admin.
    refused_cli = controller.cli("job", "rollback", "svc", "--to", "1")
    assert refused_cli.returncode == 2 and "managed in the config repository" in refused_cli.stderr
    done = controller.cli("job", "rollback", "svc", "--to", "1", "--force")
    assert done.returncode == 0 and "version 3" in done.stdout
    with controller.client() as c:
        assert c.get("/api/v1/jobs/svc").json()["spec"] == job_yaml("svc", "one")


def test_config_instance_shows_the_source_in_effect(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "controller").start()
    try:
        folder = tmp_path / "config"
        (folder / "schedules").mkdir(parents=True)
        (folder / "schedules/retention.yml").write_text("build_keep_last: 25\n")
        (folder / "pools").mkdir()
        (folder / "pools/linux.yml").write_text("name: linux\nlabels: [linux]\nmax: 3\n")
        (folder / "grants").mkdir()
        (folder / "grants/admin.yml").write_text("user: admin\ngrants: []\n")
        refused = controller.cli("config", "apply", str(folder))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "grants/admin.yml:2: this would remove the last admin grant" in refused.stderr
        (folder / "grants/admin.yml").unlink()
        applied = controller.cli("config", "apply", str(folder))
        assert applied.returncode == 0, applied.stderr
        shown = controller.cli("config", "instance")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert any(line.split()[:3] == ["build_keep_last", "25", "config"] for line in lines)
        assert any(
            line.split()[:2] == ["artifact_keep_days", "30"] and "settings" in line
            for line in lines
        )
        assert "schedules/backup.yml: not applied" in shown.stdout
    finally:
        controller.stop()
