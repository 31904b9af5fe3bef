"""Configuration as code, the kinds pool, notifier, grant and schedule (SQLite and
PostgreSQL, through the API): apply, diff, export -> apply -> export identical with
every kind, one bad file among many applies nothing, release, and the running
instance uses what was applied (autoscaler pools, notifications, grants, retention and
backup loops)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from conveyor.controller.notifications import Notifier
from conveyor.core.config_repo import load_config
from conveyor.core.states import BuildState
from conveyor.credentials.keys import SecretKey
from conveyor.runtime import Runtime
from conveyor.store import security as db
from tests.conftest import FakeClock
from tests.notifications.test_delivery import Receiver, finished_build, receiver  # noqa: F401
from tests.scm.test_config_as_code import job_yaml

SOURCE = "https://git.example.org/ops/config.git"

POOL = """\
name: linux
labels: [linux, docker]
min: 1
max: 6
executors: 2
provider: command
provider_config:
  command: [/opt/ci/vm-provider, --region, eu]
  timeout: 60
policy:
  scale_up_wait_seconds: 20
  periods:
    - name: nights
      cron: "* 0-6 * * *"
      max: 2
"""

NOTIFIER = """\
name: team-hook
type: webhook
url: {url}
headers:
  X-Team: platform
rules:
  - jobs: "team-a/*"
    on: [failure, fixed]
"""

GRANTS = """\
user: alice
grants:
  - role: developer
    pattern: team-a/*
  - role: viewer
"""

RETENTION = "artifact_keep_days: 7\nbuild_keep_last: 50\n"
BACKUP = "full_cron: 0 2 * * 0\nprune_cron: 0 4 * * *\nkeep_weekly_fulls: 2\nartifacts: false\n"


def all_kinds(url: str = "https://hooks.example.org/ci") -> dict[str, str]:
    return {
        "folders/team-a.yml": "name: team-a\n",
        "jobs/team-a/api.yml": job_yaml("team-a/api"),
        "pools/linux.yml": POOL,
        "notifiers/team-hook.yml": NOTIFIER.format(url=url),
        "grants/alice.yml": GRANTS,
        "schedules/retention.yml": RETENTION,
        "schedules/backup.yml": BACKUP,
    }


async def apply(client: httpx.AsyncClient, files: dict[str, str], **extra: Any) -> httpx.Response:
    body = {"files": files, "source": SOURCE, **extra}
    return await client.post("/api/v1/config/apply", json=body)


async def add_user(runtime: Runtime, name: str) -> None:
    await db.create_user(runtime.store, name, None, runtime.clock())


def changed(answer: httpx.Response) -> list[tuple[str, str, str]]:
    return [
        (c["kind"], c["name"], c["action"])
        for c in answer.json()["changes"]
        if c["action"] != "unchanged"
    ]


async def test_apply_every_kind_then_export_apply_export_is_identical(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add_user(runtime, "alice")
    diff = await apply(client, all_kinds(), dry_run=True)
    assert diff.status_code == 200, diff.text
    assert ("pool", "linux", "create") in changed(diff)
    assert (await client.get("/api/v1/pools")).json() == []  # a diff changes nothing

    answer = await apply(client, all_kinds(), commit="a" * 40)
    assert answer.status_code == 200, answer.text
    assert sorted(changed(answer)) == [
        ("folder", "team-a", "create"),
        ("grant", "alice", "create"),  # alice had no grants yet
        ("job", "team-a/api", "create"),
        ("notifier", "team-hook", "create"),
        ("pool", "linux", "create"),
        ("schedule", "backup", "create"),
        ("schedule", "retention", "create"),
    ]

    # The running instance has them, as the API shows them.
    pool = (await client.get("/api/v1/pools/linux")).json()
    assert (pool["labels"], pool["min"], pool["max"], pool["executors"]) == (
        ["docker", "linux"],
        1,
        6,
        2,
    )
    assert pool["provider"] == "command" and pool["policy"]["scale_up_wait_seconds"] == 20
    grants = (await client.get("/api/v1/grants", params={"user": "alice"})).json()
    assert sorted((g["role"], g["pattern"]) for g in grants) == [
        ("developer", "team-a/*"),
        ("viewer", "*"),
    ]
    instance = (await client.get("/api/v1/config/instance")).json()
    retention = instance["retention"]
    assert retention["managed_file"] == "schedules/retention.yml"
    assert retention["fields"]["artifact_keep_days"] == {"value": 7, "source": "config"}
    assert retention["fields"]["build_keep_days"]["source"] == "settings (build_keep_days)"
    assert instance["backup"]["fields"]["full_cron"] == {"value": "0 2 * * 0", "source": "config"}

    exported = (await client.get("/api/v1/config/export")).json()["files"]
    assert sorted(exported) == sorted(
        [*all_kinds(), "grants/admin.yml"]  # the first admin's grant is configuration too
    )
    assert exported["grants/admin.yml"] == "user: admin\ngrants:\n- role: admin\n  pattern: '*'\n"
    assert exported["schedules/retention.yml"] == RETENTION
    again = await apply(client, exported, commit="b" * 40)
    assert again.status_code == 200, again.text
    assert changed(again) == []
    assert (await client.get("/api/v1/config/export")).json()["files"] == exported
    # The canonical files read back as the same objects (what export writes, apply reads).
    assert {(d.kind, d.name) for d in load_config(exported)} >= {("pool", "linux")}

    # A changed pool and a dropped notifier: an update and a release, nothing deleted.
    files = dict(exported)
    files["pools/linux.yml"] = exported["pools/linux.yml"].replace("max: 6", "max: 8")
    del files["notifiers/team-hook.yml"]
    diff = await apply(client, files, dry_run=True)
    assert changed(diff) == [("notifier", "team-hook", "release"), ("pool", "linux", "update")]
    assert (await apply(client, files, commit="c" * 40)).status_code == 200
    assert (await client.get("/api/v1/pools/linux")).json()["max"] == 8
    after = (await client.get("/api/v1/config/export")).json()["files"]
    assert after["notifiers/team-hook.yml"] == exported["notifiers/team-hook.yml"]  # kept
    # Released: the next apply of the same files no longer lists it.
    assert changed(await apply(client, files, dry_run=True)) == []


async def test_one_bad_file_among_many_applies_nothing_and_names_file_and_line(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add_user(runtime, "alice")
    files = all_kinds()
    files.update(
        {f"jobs/team-a/job-{i:02d}.yml": job_yaml(f"team-a/job-{i:02d}") for i in range(30)}
    )
    files["grants/bob.yml"] = "user: bob\ngrants:\n  - role: viewer\n"  # bob does not exist
    answer = await apply(client, files)
    assert answer.status_code == 400
    assert "nothing was applied" in answer.json()["detail"]
    assert answer.json()["errors"] == [
        "grants/bob.yml:1: unknown user 'bob': users are not configuration; create the user "
        "first (conveyor admin user add bob), then apply"
    ]
    # Problems of several kinds are all reported together, each with its file and line.
    files["pools/linux.yml"] = POOL.replace("max: 6", "max: 0")
    files["schedules/backup.yml"] = "full_cron: every sunday\n"
    files["notifiers/team-hook.yml"] = NOTIFIER.format(url="ftp://nowhere")
    errors = (await apply(client, files)).json()["errors"]
    assert [e.split(": ")[0] for e in errors] == [
        "grants/bob.yml:1",
        "notifiers/team-hook.yml:3",
        "pools/linux.yml:3",
        "schedules/backup.yml:1",
    ]
    assert "min 1 > max 0" in errors[2]
    # Nothing changed: no pool, no notifier, no schedule, alice without grants, no job.
    assert (await client.get("/api/v1/pools")).json() == []
    assert (await client.get("/api/v1/jobs")).json() == []
    assert (await client.get("/api/v1/grants", params={"user": "alice"})).json() == []
    exported = (await client.get("/api/v1/config/export")).json()["files"]
    assert sorted(exported) == ["grants/admin.yml"]
    assert (await client.get("/api/v1/config/applies")).json() == []


async def test_an_apply_never_removes_the_last_admin_grant(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    answer = await apply(client, {"grants/admin.yml": "user: admin\ngrants:\n  - role: viewer\n"})
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        "grants/admin.yml:2: this would remove the last admin grant (admin on '*' of 'admin'): "
        "keep at least one enabled user with role admin on '*' (nothing was applied)"
    ]
    # With another admin declared in the same apply, it is fine.
    await add_user(runtime, "alice")
    files = {
        "grants/admin.yml": "user: admin\ngrants:\n  - role: viewer\n",
        "grants/alice.yml": "user: alice\ngrants:\n  - role: admin\n",
    }
    assert (await apply(client, files)).status_code == 200
    grants = (await client.get("/api/v1/grants")).json()
    assert sorted((g["user"], g["role"], g["pattern"]) for g in grants) == [
        ("admin", "viewer", "*"),
        ("alice", "admin", "*"),
    ]
    # Every grant change by an apply is a security audit event.
    events = await db.list_audit(runtime.store, security_only=True, limit=50)
    applied = {e.target: e.detail for e in events if e.action == "grant.config_applied"}
    assert applied["user:admin"] == {
        "added": [["viewer", "*"]],
        "removed": [["admin", "*"]],
        "commit": None,
        "file": "grants/admin.yml",
    }
    assert applied["user:alice"]["added"] == [["admin", "*"]]


async def test_a_pool_secret_never_goes_to_git_and_survives_an_apply(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    assert runtime.credentials is not None
    runtime.credentials.key = SecretKey(secrets.token_bytes(32))  # inline secrets get sealed
    body = {
        "name": "k8s",
        "provider": "kubernetes",
        "provider_config": {"namespace": "ci", "token": "s3cr3t", "image": "conveyor:1"},
    }
    assert (await client.post("/api/v1/pools", json=body)).status_code == 201, body
    exported = (await client.get("/api/v1/config/export")).json()["files"]
    text = exported["pools/k8s.yml"]
    assert "s3cr3t" not in text and "token: '***'" in text and "sealed" not in text
    # Applying the export keeps the stored (sealed) token; a new max changes only the max.
    from conveyor.providers.secrets import resolve_config
    from conveyor.store.pools import get_pool

    before = (await get_pool(runtime.store, "k8s")).provider_config["token"]
    files = {"pools/k8s.yml": text.replace("max: 4", "max: 3")}
    answer = await apply(client, files)
    assert answer.status_code == 200, answer.text
    pool = await get_pool(runtime.store, "k8s")
    assert pool.provider_config["token"] == before and pool.max_size == 3
    resolved = await resolve_config(runtime.credentials, "k8s", pool.provider_config)
    assert resolved["token"] == "s3cr3t"
    # A secret written in a file is refused at its line, also deeper in the config.
    files = {"pools/k8s.yml": text.replace("token: '***'", "token: plain-text")}
    errors = (await apply(client, files)).json()["errors"]
    assert len(errors) == 1 and errors[0].startswith("pools/k8s.yml:")
    assert "a secret is never written in the config repository" in errors[0]
    # A reference to the credentials store is what a file says instead (the same rules
    # as the API's); an unknown credential is refused before anything changes.
    referenced = text.replace("token: '***'", "token_credential: ci/k8s-token")
    errors = (await apply(client, {"pools/k8s.yml": referenced})).json()["errors"]
    assert errors and "unknown credential(s): ci/k8s-token" in errors[0], errors
    created = await client.post(
        "/api/v1/credentials", json={"id": "ci/k8s-token", "kind": "text", "value": "from-vault"}
    )
    assert created.status_code == 201, created.text
    answer = await apply(client, {"pools/k8s.yml": referenced})
    assert answer.status_code == 200, answer.text
    pool = await get_pool(runtime.store, "k8s")
    assert pool.provider_config.get("token_credential") == "ci/k8s-token"
    assert "token" not in pool.provider_config
    resolved = await resolve_config(runtime.credentials, "k8s", pool.provider_config)
    assert resolved["token"] == "from-vault"
    again = (await client.get("/api/v1/config/export")).json()["files"]["pools/k8s.yml"]
    assert again == referenced


async def test_a_stored_notifier_sends_and_the_file_wins_no_clash(
    runtime: Runtime,
    client: httpx.AsyncClient,
    clock: FakeClock,
    receiver: Receiver,  # noqa: F811
) -> None:
    answer = await apply(client, {"notifiers/team-hook.yml": NOTIFIER.format(url=receiver.url())})
    assert answer.status_code == 200, answer.text
    notifier = Notifier(runtime.store, None, clock, environ={}, base_delay=0.01, max_delay=0.05)
    build = await finished_build(runtime.store, clock, "team-a/api")
    try:
        delivered = await notifier.notify(build, [])
    finally:
        await notifier.close()
    assert [(d.notifier, d.state) for d in delivered] == [("team-hook", "delivered")]
    assert len(receiver.delivered) == 1
    assert receiver.delivered[0].headers["x-team"] == "platform"

    # A name the controller's notifications file defines is refused, at its line.
    from conveyor.controller.config_apply import ApplyEnv, ConfigApplier
    from conveyor.errors import InvalidInput

    applier = ConfigApplier(
        runtime.store, clock, ApplyEnv(None, {"team-hook": "/etc/conveyor/notifications.yml"})
    )
    with pytest.raises(InvalidInput) as caught:
        await applier.apply(
            {"notifiers/team-hook.yml": NOTIFIER.format(url=receiver.url())}, SOURCE, None, "t"
        )
    assert caught.value.errors == [
        "notifiers/team-hook.yml:1: notifier 'team-hook' is also defined in the controller's "
        "notifications file /etc/conveyor/notifications.yml: a notifier is defined in one "
        "place only; remove it from that file or rename this one"
    ]


async def test_leader_loops_use_the_applied_schedules(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    from conveyor.backup.schedule import BackupScheduler
    from conveyor.controller.history import HistoryRetention
    from conveyor.controller.retention import ArtifactRetention

    history = HistoryRetention.from_settings(
        runtime.settings, runtime.store, runtime.blobs, runtime.lease, clock
    )
    artifacts = ArtifactRetention.from_settings(
        runtime.settings, runtime.store, runtime.blobs, runtime.lease, clock
    )
    scheduler = BackupScheduler(
        runtime.settings, runtime.store, runtime.lease, clock, runtime.metrics
    )
    # Nothing applied: the settings are in effect.
    assert (await artifacts.effective_policy()).keep_days == runtime.settings.artifact_keep_days
    assert (await history.effective_policy()).keep_last == runtime.settings.build_keep_last
    assert await runtime.lease.run_once()
    await scheduler.run_once()
    assert scheduler.schedules == []

    for _ in range(4):
        await finished_build(runtime.store, clock, "team-a/api", BuildState.SUCCEEDED)
    assert await history.run_once() == 0  # the settings keep every build
    assert len(await runtime.store.list_builds("team-a/api")) == 4

    files = {"schedules/retention.yml": RETENTION, "schedules/backup.yml": BACKUP}
    assert (await apply(client, files)).status_code == 200
    assert (await artifacts.effective_policy()).keep_days == 7
    assert (await history.effective_policy()).keep_last == 50
    # The leader's history pass deletes by the stored policy, no restart needed.
    retention = RETENTION.replace("build_keep_last: 50", "build_keep_last: 1")
    files["schedules/retention.yml"] = retention
    assert (await apply(client, files)).status_code == 200
    await history.run_once()
    assert len(await runtime.store.list_builds("team-a/api")) == 1
    clock.advance(1)
    await scheduler.run_once()
    assert scheduler.schedules == [("full", "0 2 * * 0"), ("prune", "0 4 * * *")]
    assert scheduler.overrides["backup_keep_weekly_fulls"] == 2
    assert scheduler.overrides["backup_artifacts"] is False


async def test_every_kind_from_a_real_git_repository(
    client: httpx.AsyncClient, runtime: Runtime, tmp_path: Any
) -> None:
    from tests.scm.gitserver import Repo

    await add_user(runtime, "alice")
    repo = Repo(tmp_path / "srv", "config")
    sha = repo.create({**all_kinds(), "README.md": "the instance\n"}, "every kind")
    answer = await client.post("/api/v1/config/apply", json={"repo": repo.file_url})
    assert answer.status_code == 200, answer.text
    assert answer.json()["commit"] == sha
    instance = (await client.get("/api/v1/config/instance")).json()
    assert instance["backup"]["managed_repo"] == repo.file_url
    assert instance["backup"]["managed_commit"] == sha
    exported = (await client.get("/api/v1/config/export")).json()["files"]
    # Jobs come back byte for byte, the other kinds in canonical form.
    canonical = {d.file: d.text for d in load_config(all_kinds())}
    assert {k: v for k, v in exported.items() if k != "grants/admin.yml"} == canonical
    assert canonical["jobs/team-a/api.yml"] == all_kinds()["jobs/team-a/api.yml"]

    # A bad commit (a grant for a user that does not exist) changes nothing.
    repo.commit({"grants/carol.yml": "user: carol\ngrants: []\n", "pools/linux.yml": ""}, "bad")
    bad = await client.post("/api/v1/config/apply", json={"repo": repo.file_url})
    assert bad.status_code == 400
    assert bad.json()["errors"] == [
        "grants/carol.yml:1: unknown user 'carol': users are not configuration; create the "
        "user first (conveyor admin user add carol), then apply",
        "pools/linux.yml:1: a pool is a mapping",
    ]
    assert (await client.get("/api/v1/config/export")).json()["files"] == exported
