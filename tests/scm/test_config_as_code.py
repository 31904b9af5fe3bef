"""Configuration as code through the API (SQLite and PostgreSQL): validate-all then
one transaction; export -> apply -> export identical; rollback; managed-job guard."""

from __future__ import annotations

from typing import Any

import httpx

from conveyor.runtime import Runtime
from conveyor.store.scm import version_commits


def job_yaml(name: str, message: str = "hi") -> str:
    return (
        f"name: {name}\n"
        "description: generated for the config tests\n"
        "stages:\n"
        "  - name: build\n"
        "    steps:\n"
        f"      - echo: {message}\n"
    )


def fifty_jobs(bad: int | None = None) -> dict[str, str]:
    files = {f"jobs/team/job-{i:02d}.yml": job_yaml(f"team/job-{i:02d}") for i in range(50)}
    files["folders/team.yml"] = "name: team\ndescription: The team's jobs\n"
    files["README.md"] = "not configuration"
    if bad is not None:
        # Line 5: a step of an unknown type.
        files[f"jobs/team/job-{bad:02d}.yml"] = job_yaml(f"team/job-{bad:02d}").replace(
            "    steps:\n", "    steps:\n      - make: all\n"
        )
    return files


async def apply(client: httpx.AsyncClient, files: dict[str, str], **extra: Any) -> httpx.Response:
    body = {"files": files, "source": "https://git.example.org/ops/config.git", **extra}
    return await client.post("/api/v1/config/apply", json=body)


async def test_one_bad_job_among_50_applies_nothing_and_names_file_and_line(
    client: httpx.AsyncClient,
) -> None:
    answer = await apply(client, fifty_jobs(bad=37), commit="a" * 40)
    assert answer.status_code == 400
    problem = answer.json()
    assert "nothing was applied" in problem["detail"]
    assert problem["errors"] == [
        "jobs/team/job-37.yml:6: stages[0].steps[0]: unknown step type 'make' "
        "(expected sh, echo, archive or publish)"
    ]
    assert (await client.get("/api/v1/jobs")).json() == []
    exported = (await client.get("/api/v1/config/export")).json()["files"]
    assert list(exported) == ["grants/admin.yml"]  # only the first admin's grant
    assert (await client.get("/api/v1/config/applies")).json() == []

    # Several problems in several files are all reported, each with its file and line.
    files = fifty_jobs(bad=3)
    files["jobs/team/job-04.yml"] = job_yaml("team/other")
    files["pipelines/linux.yml"] = "name: linux\n"
    errors = (await apply(client, files)).json()["errors"]
    assert [e.split(":")[0] for e in errors] == [
        "jobs/team/job-03.yml",
        "jobs/team/job-04.yml",
        "pipelines/linux.yml",
    ]
    assert "move it to jobs/team/other.yml" in errors[1]
    assert (
        "not in a known kind folder (known: folders/, grants/, jobs/, notifiers/, pools/, "
        "schedules/)" in errors[2]
    )
    assert (await client.get("/api/v1/jobs")).json() == []


async def test_apply_records_the_commit_and_export_apply_export_is_identical(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    commit = "c0ffee" + "0" * 34
    answer = await apply(client, fifty_jobs(), commit=commit)
    assert answer.status_code == 200, answer.text
    actions = [c["action"] for c in answer.json()["changes"]]
    assert actions.count("create") == 51
    assert len((await client.get("/api/v1/jobs")).json()) == 50
    assert (await version_commits(runtime.store, "team/job-07"))[1]["commit"] == commit

    exported = (await client.get("/api/v1/config/export")).json()["files"]
    assert exported["jobs/team/job-07.yml"] == job_yaml("team/job-07")
    assert exported["folders/team.yml"] == "name: team\ndescription: The team's jobs\n"
    again = await apply(client, exported, commit="d" * 40)
    assert {c["action"] for c in again.json()["changes"]} == {"unchanged"}
    assert (await client.get("/api/v1/config/export")).json()["files"] == exported

    # A dry run (diff) says what would change and changes nothing.
    changed = dict(exported)
    changed["jobs/team/job-01.yml"] = job_yaml("team/job-01", "changed")
    del changed["jobs/team/job-02.yml"]
    diff = (await apply(client, changed, dry_run=True)).json()
    assert diff["applied"] is False
    assert [(c["name"], c["action"]) for c in diff["changes"] if c["action"] != "unchanged"] == [
        ("team/job-01", "update"),
        ("team/job-02", "release"),
    ]
    job = (await client.get("/api/v1/jobs/team/job-01")).json()
    assert job["version"] == 1


async def test_managed_jobs_refuse_api_edits_and_rollback_restores_the_exact_spec(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    v1 = job_yaml("svc", "one")
    v2 = job_yaml("svc", "two") + "retry: 2\n"
    assert (await apply(client, {"jobs/svc.yml": v1}, commit="1" * 40)).status_code == 200
    assert (await apply(client, {"jobs/svc.yml": v2}, commit="2" * 40)).status_code == 200

    refused = await client.put("/api/v1/jobs/svc", json={"spec": job_yaml("svc", "by hand")})
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "https://git.example.org/ops/config.git" in detail and "jobs/svc.yml" in detail
    assert (await client.delete("/api/v1/jobs/svc")).status_code == 409
    # An admin may force it (audited through job_edits.audit_hook).
    forced = await client.put(
        "/api/v1/jobs/svc", params={"force": "true"}, json={"spec": job_yaml("svc", "hotfix")}
    )
    assert forced.status_code == 200 and forced.json()["version"] == 3

    back = await client.post("/api/v1/jobs/svc/rollback", params={"force": "true"}, json={"to": 1})
    assert back.status_code == 200, back.text
    assert back.json() == {"job": "svc", "version": 4, "changed": True, "restored": 1}
    versions = (await client.get("/api/v1/jobs/svc/versions")).json()
    assert versions[0]["spec"] == v1  # byte for byte
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    commits = (await client.get("/api/v1/jobs/svc/commits")).json()
    assert commits["1"]["commit"] == "1" * 40 and commits["2"]["commit"] == "2" * 40
    assert commits["4"]["source"] == "rollback to version 1"
    # Without force, a managed job's rollback is refused like any edit.
    assert (await client.post("/api/v1/jobs/svc/rollback", json={"to": 2})).status_code == 409
    missing = await client.post(
        "/api/v1/jobs/svc/rollback", params={"force": "true"}, json={"to": 99}
    )
    assert missing.status_code == 404


async def test_rollback_of_an_unmanaged_job(client: httpx.AsyncClient) -> None:
    for text in ("one", "two", "three"):
        assert (
            await client.put("/api/v1/jobs/app", json={"spec": job_yaml("app", text)})
        ).is_success
    back = await client.post("/api/v1/jobs/app/rollback", json={"to": 2})
    assert back.json()["version"] == 4
    assert (await client.get("/api/v1/jobs/app/versions/4")).json()["spec"] == job_yaml(
        "app", "two"
    )
    same = await client.post("/api/v1/jobs/app/rollback", json={"to": 2})
    assert same.json() == {"job": "app", "version": 4, "changed": False, "restored": 2}
    bad = await client.post("/api/v1/jobs/app/rollback", json={"to": 0})
    assert bad.status_code == 400


async def test_leader_sync_applies_new_commits_and_keeps_the_last_good_one(
    runtime: Runtime, client: httpx.AsyncClient, clock: Any, tmp_path: Any
) -> None:
    from conveyor.controller.config_apply import ConfigApplier
    from conveyor.controller.config_sync import ConfigSync
    from tests.scm.gitserver import Repo

    repo = Repo(tmp_path / "srv", "config")
    first = repo.create({"jobs/svc.yml": job_yaml("svc", "one")}, "one")
    sync = ConfigSync(
        ConfigApplier(runtime.store, clock),
        runtime.lease,
        tmp_path / "mirrors",
        repo.file_url,
        "main",
        60.0,
        clock,
    )
    assert await sync.run_once() is None  # not the leader: nothing
    assert await runtime.lease.run_once()
    result = await sync.run_once()
    assert result is not None and result.commit == first
    assert await sync.run_once() is None  # not due yet
    clock.advance(61)
    assert await sync.run_once() is None  # due, but that commit is applied already

    repo.commit({"jobs/svc.yml": job_yaml("svc", "two"), "jobs/bad.yml": "name: bad\n"}, "bad")
    clock.advance(61)
    assert await sync.run_once() is None
    assert sync.last_error is not None and "jobs/bad.yml:1:" in sync.last_error
    assert "echo: one" in (await client.get("/api/v1/jobs/svc")).json()["spec"]

    fixed = repo.commit({"jobs/bad.yml": job_yaml("bad")}, "fix")
    clock.advance(61)
    result = await sync.run_once()
    assert result is not None and result.commit == fixed and sync.last_error is None
    assert "echo: two" in (await client.get("/api/v1/jobs/svc")).json()["spec"]
    assert (await client.get("/api/v1/jobs/bad")).status_code == 200
