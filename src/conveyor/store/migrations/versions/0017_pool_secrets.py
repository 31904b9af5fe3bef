"""scaling decisions record the builds waiting for the pool

The elastic-agents follow-up (issue 8): the pool page charts a pool's size and the
builds waiting for it over time, from the recorded decisions, so each decision now
stores how many queued builds the pool served (``waiting``; NULL for decisions
recorded before). The other part of that work — provider secrets sealed with the
credentials key or referenced by credential id — lives inside the existing
``pools.provider_config`` JSON and needs no schema change.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 22:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scaling_decisions") as batch:
        batch.add_column(sa.Column("waiting", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scaling_decisions") as batch:
        batch.drop_column("waiting")
