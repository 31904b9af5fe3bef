"""multibranch pull/merge request and tag sub-jobs; SCM poll status

* ``job_meta.kind``: what a sub-job of a multibranch parent builds: ``branch`` (also
  when NULL, as before), ``pr`` (a pull/merge request) or ``tag``;
  ``change_id`` / ``change_target``: a request's number and target branch.
* ``scm_polls``: per job, when the leader last polled its repository and the error of
  the last poll (a missing credential, an unreachable repository), if it failed.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 22:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

When = conveyor.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("job_meta") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("change_id", sa.String(length=50), nullable=True))
        batch.add_column(sa.Column("change_target", sa.String(length=250), nullable=True))
    op.create_table(
        "scm_polls",
        sa.Column("job_name", sa.String(length=200), nullable=False),
        sa.Column("polled_at", When, nullable=False),
        sa.Column("succeeded_at", When, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_name", name=op.f("pk_scm_polls")),
    )


def downgrade() -> None:
    op.drop_table("scm_polls")
    with op.batch_alter_table("job_meta") as batch:
        batch.drop_column("change_target")
        batch.drop_column("change_id")
        batch.drop_column("kind")
