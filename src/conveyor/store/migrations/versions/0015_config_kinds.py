"""config as code: more kinds (pools, notifiers, grants, instance schedules)

``config_managed`` records which config source manages a pool, a user's grants, a
notifier or an instance schedule; ``notifiers`` holds the notifiers (and their rules)
a config apply stores; ``instance_settings`` the retention and backup schedules that
win over the controller's settings.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 22:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

When = conveyor.store.types.UTCDateTime(timezone=True)

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_managed",
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("managed_repo", sa.String(2000), nullable=False),
        sa.Column("managed_file", sa.String(1000), nullable=False),
        sa.Column("managed_commit", sa.String(64), nullable=True),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_config_managed"),
    )
    op.create_table(
        "notifiers",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_notifiers"),
    )
    op.create_table(
        "instance_settings",
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_instance_settings"),
    )


def downgrade() -> None:
    op.drop_table("instance_settings")
    op.drop_table("notifiers")
    op.drop_table("config_managed")
