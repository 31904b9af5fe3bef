"""users, grants, user tokens, sessions, agent enrollment tokens, audit log

The legacy ``api_tokens`` (the bootstrap admin token) move to an ``admin`` user with a
global admin grant, so existing tokens keep working.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:30:00.000000
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when() -> conveyor.store.types.UTCDateTime:
    return conveyor.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", _when(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "user_grants",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("pattern", sa.String(200), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_grants_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_grants")),
        sa.UniqueConstraint("user_id", "role", "pattern", name="uq_user_grants"),
    )
    op.create_table(
        "user_tokens",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("expires_at", _when(), nullable=True),
        sa.Column("revoked_at", _when(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_tokens_token_hash")),
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("expires_at", _when(), nullable=False),
        sa.Column("revoked_at", _when(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_user_sessions_session_hash")),
    )
    op.create_table(
        "agent_tokens",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(200), nullable=True),
        sa.Column("agent_name", sa.String(200), nullable=True),
        sa.Column("one_time", sa.Boolean(), nullable=False),
        sa.Column("used_at", _when(), nullable=True),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("expires_at", _when(), nullable=True),
        sa.Column("revoked_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_agent_tokens_token_hash")),
    )
    op.create_table(
        "agent_bindings",
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("token_id", ID, nullable=False),
        sa.Column("bound_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_bindings_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["agent_tokens.id"],
            name=op.f("fk_agent_bindings_token_id_agent_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agent_bindings")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", _when(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("outcome", sa.String(50), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    _adopt_legacy_tokens()


def _adopt_legacy_tokens() -> None:
    """Existing API tokens (the bootstrap admin token) become tokens of user ``admin``."""
    bind = op.get_bind()
    legacy = sa.table(
        "api_tokens",
        sa.column("name", sa.String),
        sa.column("token_hash", sa.String),
        sa.column("scope", sa.String),
        sa.column("created_at", _when()),
        sa.column("expires_at", _when()),
        sa.column("revoked_at", _when()),
    )
    rows = bind.execute(sa.select(legacy)).all()
    if not rows:
        return
    now = dt.datetime.now(dt.UTC)
    users = sa.table(
        "users",
        sa.column("id", ID),
        sa.column("name", sa.String),
        sa.column("disabled", sa.Boolean),
        sa.column("failed_logins", sa.Integer),
        sa.column("created_at", _when()),
    )
    grants = sa.table(
        "user_grants",
        sa.column("user_id", ID),
        sa.column("role", sa.String),
        sa.column("pattern", sa.String),
        sa.column("created_at", _when()),
    )
    tokens = sa.table(
        "user_tokens",
        sa.column("user_id", ID),
        sa.column("name", sa.String),
        sa.column("token_hash", sa.String),
        sa.column("scope", sa.String),
        sa.column("created_at", _when()),
        sa.column("expires_at", _when()),
        sa.column("revoked_at", _when()),
    )
    bind.execute(
        sa.insert(users).values(name="admin", disabled=False, failed_logins=0, created_at=now)
    )
    admin_id = bind.execute(sa.select(users.c.id).where(users.c.name == "admin")).scalar_one()
    bind.execute(
        sa.insert(grants).values(user_id=admin_id, role="admin", pattern="*", created_at=now)
    )
    for row in rows:
        bind.execute(
            sa.insert(tokens).values(
                user_id=admin_id,
                name=row.name,
                token_hash=row.token_hash,
                scope=row.scope if row.scope in ("read", "trigger", "admin") else "read",
                created_at=row.created_at,
                expires_at=row.expires_at,
                revoked_at=row.revoked_at,
            )
        )


def downgrade() -> None:
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    for table in (
        "audit_events",
        "agent_bindings",
        "agent_tokens",
        "user_sessions",
        "user_tokens",
        "user_grants",
        "users",
    ):
        op.drop_table(table)
