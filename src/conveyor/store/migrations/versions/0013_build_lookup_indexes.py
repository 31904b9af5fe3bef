"""index for a build by job name and number

``GET /api/v1/jobs/{name}/builds/{number}`` looked the build up by
``job_name = ? AND number = ?``; the only index with ``number`` was the unique
``(job_id, number)``, so PostgreSQL walked every job's build of that number and
filtered by name (1,000,000 builds over 1,000 jobs: 52 ms for the query, p50
142 ms through the API). With ``(job_name, number)`` it is one index probe
(p50 6 ms, p95 8 ms through the API; bench/history.py on PostgreSQL).

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-04 20:55:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_builds_job_name_number", "builds", ["job_name", "number"])


def downgrade() -> None:
    op.drop_index("ix_builds_job_name_number", table_name="builds")
