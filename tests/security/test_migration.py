"""Migration 0006 on a database from before users existed: its API tokens become
tokens of a real ``admin`` user, so existing CLIs and scripts keep working."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from conveyor.core.permissions import Grant, Role
from conveyor.security.auth import digest
from conveyor.store import open_store
from conveyor.store import security as db
from conveyor.store.migrate import alembic_config, upgrade


async def test_legacy_tokens_move_to_the_admin_user(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        conn.execute(
            text(
                "INSERT INTO api_tokens (name, token_hash, scope, created_at)"
                " VALUES ('admin', :h, 'admin', :t)"
            ),
            {"h": digest("cvy_legacy"), "t": datetime(2026, 1, 1, tzinfo=UTC)},
        )
    engine.dispose()
    store = open_store(url)
    try:
        await upgrade(store.write_engine)
        token = await db.find_user_token(store, digest("cvy_legacy"))
        assert token is not None and (token.user, token.scope) == ("admin", "admin")
        assert await db.grants_of(store, token.user_id) == [Grant(Role.ADMIN, "*")]
    finally:
        await store.close()
