"""failure analysis

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:25:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_category", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("failure_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_column("failure_detail")
        batch_op.drop_column("failure_category")
