"""A config repository behind Basic auth: ``POST /api/v1/config/apply {"repo", "credential"}``
and the leader's sync (setting ``config_repo_credential``) fetch it with a stored
credential (SQLite and PostgreSQL, `git http-backend` on 127.0.0.1)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx

from conveyor.controller.config_apply import ConfigApplier
from conveyor.controller.config_sync import ConfigSync
from conveyor.credentials.keys import SecretKey
from conveyor.runtime import Runtime
from tests.scm.gitserver import GitHttp, Repo
from tests.scm.test_config_as_code import job_yaml


async def test_config_repository_with_a_stored_credential(
    runtime: Runtime, client: httpx.AsyncClient, clock: Any, tmp_path: Path
) -> None:
    assert runtime.credentials is not None and runtime.scm is not None
    runtime.credentials.key = SecretKey(secrets.token_bytes(32))  # a configured store
    password = "pw-" + secrets.token_hex(8)
    repo = Repo(tmp_path / "srv", "config")
    first = repo.create({"jobs/svc.yml": job_yaml("svc", "one")}, "one")
    server = GitHttp(tmp_path / "srv", basic_auth=f"cfg:{password}").start()
    try:
        url = server.url(repo)
        body = {"repo": url, "credential": "ops/config-login"}
        missing = await client.post("/api/v1/config/apply", json=body)
        assert missing.status_code == 400, missing.text
        assert "'ops/config-login'" in missing.json()["detail"]
        unauthenticated = await client.post("/api/v1/config/apply", json={"repo": url})
        assert unauthenticated.status_code == 400  # git's own refusal, as bad input

        created = await client.post(
            "/api/v1/credentials",
            json={"id": "ops/config-login", "kind": "username_password", "username": "cfg",
                  "password": password},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        applied = await client.post("/api/v1/config/apply", json=body)
        assert applied.status_code == 200, applied.text
        assert (await client.get("/api/v1/jobs/svc")).status_code == 200

        # The leader's scheduled sync, with the credential from the setting.
        second = repo.commit({"jobs/svc.yml": job_yaml("svc", "two")}, "two")
        sync = ConfigSync(
            ConfigApplier(runtime.store, clock),
            runtime.lease,
            tmp_path / "mirrors",
            url,
            "main",
            60.0,
            clock,
            "ops/config-login",
            runtime.scm,
        )
        assert await runtime.lease.run_once()
        result = await sync.run_once()
        assert result is not None and result.commit == second != first, sync.last_error
        assert "echo: two" in (await client.get("/api/v1/jobs/svc")).json()["spec"]
        config = (tmp_path / "mirrors").rglob("config")
        assert all(password not in p.read_text() for p in config)
    finally:
        server.stop()
