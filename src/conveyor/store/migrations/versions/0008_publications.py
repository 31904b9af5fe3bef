"""publications (where publish steps put files)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "publications",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("build_id", _ID, nullable=False),
        sa.Column("step_key", sa.String(length=200), nullable=False),
        sa.Column("repository", sa.String(length=20), nullable=False),
        sa.Column("file", sa.String(length=1000), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("coordinates", sa.String(length=500), nullable=True),
        sa.Column("created_at", conveyor.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["builds.id"],
            name=op.f("fk_publications_build_id_builds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publications")),
        sa.UniqueConstraint("build_id", "url", name="uq_publications_build_url"),
    )


def downgrade() -> None:
    op.drop_table("publications")
