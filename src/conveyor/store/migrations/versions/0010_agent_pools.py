"""agent pools, pool instances, scaling decisions; agents.pool and agents.ephemeral

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = conveyor.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("min_size", sa.Integer(), nullable=False),
        sa.Column("max_size", sa.Integer(), nullable=False),
        sa.Column("executors", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("provider_config", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column("last_scale_up_at", When, nullable=True),
        sa.Column("last_scale_down_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_pools_name")),
    )
    op.create_table(
        "pool_instances",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("agent_name", sa.String(length=200), nullable=False),
        sa.Column("instance", sa.String(length=300), nullable=False),
        sa.Column("token_id", Id, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(
            ["pool"],
            ["pools.name"],
            name=op.f("fk_pool_instances_pool_pools"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_instances")),
        sa.UniqueConstraint("agent_name", name=op.f("uq_pool_instances_agent_name")),
    )
    op.create_table(
        "scaling_decisions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("current", sa.Integer(), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("min_size", sa.Integer(), nullable=False),
        sa.Column("max_size", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.Column("drained", sa.JSON(), nullable=False),
        sa.Column("period", sa.String(length=200), nullable=True),
        sa.Column("controller", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scaling_decisions")),
    )
    op.create_index(
        "ix_scaling_decisions_pool_id", "scaling_decisions", ["pool", "id"], unique=False
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pool", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("ephemeral", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("ephemeral")
        batch_op.drop_column("pool")
    op.drop_index("ix_scaling_decisions_pool_id", table_name="scaling_decisions")
    op.drop_table("scaling_decisions")
    op.drop_table("pool_instances")
    op.drop_table("pools")
