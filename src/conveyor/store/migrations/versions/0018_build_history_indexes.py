"""indexes for a long build history: finished_at, and (job_name, state, id)

Found with bench/history.py --explain at 1,000,000 builds over 1,000 jobs
(PostgreSQL 15):

- ``/ui/`` charts the finished builds of the last 7 days (``dashboard.build_trends``:
  ``WHERE finished_at >= :first_day GROUP BY hour``). Without an index on
  ``finished_at`` that scanned the whole history: PostgreSQL ran a parallel
  sequential scan (~300 ms with two workers; SQLite 1.6 s), and every controller
  repeats it every 15 s (TREND_CACHE_SECONDS, refreshed in the background), taking
  CPU from the requests it serves. ``ix_builds_finished_at`` reads the week only.
- A job's builds in a state, newest first (``GET /api/v1/jobs/{name}/builds?state=failed``,
  ``Store.list_builds``): for a job with few builds PostgreSQL combined
  ``ix_builds_state`` (all 100,000 failed builds) with the job's index in a
  BitmapAnd, 10–16 ms per query. ``(job_name, state, id)`` answers it with a
  backward index-only range scan (0.2 ms).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 01:50:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_builds_finished_at", "builds", ["finished_at"])
    op.create_index("ix_builds_job_name_state_id", "builds", ["job_name", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_builds_job_name_state_id", table_name="builds")
    op.drop_index("ix_builds_finished_at", table_name="builds")
