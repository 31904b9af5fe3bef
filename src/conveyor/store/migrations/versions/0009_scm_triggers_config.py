"""SCM commits, trigger claims, webhook deliveries, job meta, config applies

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = conveyor.store.types.UTCDateTime(timezone=True)


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["job_id"], ["jobs.id"], name=op.f(f"fk_{table}_job_id_jobs"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "build_commits",
        sa.Column("build_id", Id, nullable=False),
        sa.Column("repository", sa.String(length=2000), nullable=False),
        sa.Column("branch", sa.String(length=250), nullable=True),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=300), nullable=True),
        sa.Column("email", sa.String(length=300), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("committed_at", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["builds.id"],
            name=op.f("fk_build_commits_build_id_builds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", name=op.f("pk_build_commits")),
    )
    op.create_table(
        "scm_heads",
        sa.Column("job_name", sa.String(length=200), nullable=False),
        sa.Column("branch", sa.String(length=250), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("job_name", "branch", name=op.f("pk_scm_heads")),
    )
    op.create_table(
        "trigger_claims",
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("build_id", Id, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_trigger_claims")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("event", sa.String(length=100), nullable=True),
        sa.Column("delivery_id", sa.String(length=200), nullable=True),
        sa.Column("repository", sa.String(length=2000), nullable=True),
        sa.Column("ref", sa.String(length=300), nullable=True),
        sa.Column("sha", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("builds", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("job_id", Id, nullable=False),
        sa.Column("secret", sa.String(length=500), nullable=False),
        _job_fk("webhook_secrets"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_webhook_secrets")),
    )
    op.create_table(
        "job_meta",
        sa.Column("job_id", Id, nullable=False),
        sa.Column("managed_repo", sa.String(length=2000), nullable=True),
        sa.Column("managed_file", sa.String(length=1000), nullable=True),
        sa.Column("managed_commit", sa.String(length=64), nullable=True),
        sa.Column("parent", sa.String(length=200), nullable=True),
        sa.Column("branch", sa.String(length=250), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        _job_fk("job_meta"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_meta")),
    )
    op.create_table(
        "job_version_commits",
        sa.Column("job_id", Id, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=2000), nullable=True),
        sa.Column("file", sa.String(length=1000), nullable=True),
        _job_fk("job_version_commits"),
        sa.PrimaryKeyConstraint("job_id", "version", name=op.f("pk_job_version_commits")),
    )
    op.create_table(
        "folders",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("managed_repo", sa.String(length=2000), nullable=True),
        sa.Column("managed_file", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_folders")),
    )
    op.create_table(
        "config_applies",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("applied_at", When, nullable=False),
        sa.Column("source", sa.String(length=2000), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("author", sa.String(length=200), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_applies")),
    )


def downgrade() -> None:
    for table in (
        "config_applies",
        "folders",
        "job_version_commits",
        "job_meta",
        "webhook_secrets",
        "webhook_deliveries",
        "trigger_claims",
        "scm_heads",
        "build_commits",
    ):
        op.drop_table(table)
