"""Release N and N+1 side by side (docs/upgrading.md): once a later release has run
its *expand* migration, controllers of this release — still running, restarted, or
rolled back to — keep serving on real PostgreSQL: /readyz stays 200 and they leave
the newer schema alone instead of failing to start on a revision they do not know."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.conftest import run_sync
from tests.harness import AgentProcess, Controller, wait_build_finished

NEXT_RELEASE = "0099_next_release_expand"


async def _sql(url: str, statement: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


async def _script(url: str, statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statements)  # several statements: the simple query protocol
    finally:
        await conn.close()


def test_this_release_runs_on_the_next_releases_expanded_schema(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    first = Controller(tmp_path / "c1", fresh_pg_url).start()  # migrates to our head
    second: Controller | None = None
    agent: AgentProcess | None = None
    try:
        ours = run_sync(_sql(fresh_pg_url, "SELECT version_num FROM alembic_version"))
        # What release N+1's first controller does on start: an expand migration
        # (a nullable column, a new table) and its revision stamped.
        run_sync(
            _script(
                fresh_pg_url,
                "BEGIN;"
                " ALTER TABLE builds ADD COLUMN next_release_note text;"
                " CREATE TABLE next_release_things (id bigserial PRIMARY KEY);"
                f" UPDATE alembic_version SET version_num = '{NEXT_RELEASE}';"
                " COMMIT;",
            )
        )
        with first.client() as c:
            ready = c.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "schema": NEXT_RELEASE, "fit": "newer"}
        # Restarted (or rolled back to) while the schema is newer: starts, serves.
        first.stop()
        first.start()
        second = Controller(tmp_path / "c2", fresh_pg_url)
        (tmp_path / "c2").mkdir()
        (tmp_path / "c2" / "admin-token").write_text(first.token + "\n")
        second.start()
        agent = AgentProcess(second, "agent-1", tmp_path / "agent").start()
        with first.client() as c:
            spec = "name: side-by-side\nstages:\n  - name: s\n    steps:\n      - echo: ok\n"
            assert c.post("/api/v1/jobs", json={"spec": spec}).status_code == 201
            build = c.post("/api/v1/jobs/side-by-side/builds", json={}).json()
        assert wait_build_finished(second, build["id"])["state"] == "succeeded"
        # The newer schema was left as it was: no downgrade, no failed migration.
        stamped = run_sync(_sql(fresh_pg_url, "SELECT version_num FROM alembic_version"))
        assert stamped == NEXT_RELEASE != ours
    finally:
        if agent is not None:
            agent.stop()
        if second is not None:
            second.stop()
        first.stop()
