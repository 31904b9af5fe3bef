"""The database schema (SQLAlchemy Core). Changed only together with a migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from conveyor.store.types import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger ids that still autoincrement on SQLite (which only does so for INTEGER).
Id = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("version", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("label_expression", String(1000), nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("next_build_number", Integer, nullable=False, default=0),
    # Operational state, not part of the spec: a disabled job starts no builds
    # (migration 0014; POST /api/v1/jobs/NAME/disable).
    Column("disabled", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

job_versions = Table(
    "job_versions",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("author", String(200), nullable=True),
)

builds = Table(
    "builds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("job_name", String(200), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("label_expression", String(1000), nullable=True),
    Column("parameters", JSON, nullable=False),
    Column("plan", JSON, nullable=False),
    Column("spec_version", Integer, nullable=False),
    Column("trigger", String(200), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("max_attempts", Integer, nullable=False, default=1),
    # Retries left for when the agent running this build is lost (not counted in max_attempts).
    Column("lost_retries", Integer, nullable=False, default=1, server_default="1"),
    Column("retry_of", Id, nullable=True),
    Column("queued_at", UTCDateTime, nullable=False),
    Column("assigned_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("agent_id", Id, nullable=True),
    Column("assignment_id", String(64), nullable=True, unique=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("cause", Text, nullable=True),
    Column("log_size", BigInteger, nullable=False, default=0),
    Column("log_blob", String(500), nullable=True),
    # Failure analysis (conveyor.core.failures): category, and JSON text with the
    # pattern name, line number, line and byte offset.
    Column("failure_category", String(50), nullable=True),
    Column("failure_detail", Text, nullable=True),
    Column("pinned", Boolean, nullable=False, default=False, server_default=false()),
    UniqueConstraint("job_id", "number", name="uq_builds_job_number"),
    Index("ix_builds_state", "state"),
    Index("ix_builds_agent_state", "agent_id", "state"),
    Index("ix_builds_job_name_id", "job_name", "id"),
    # A build by job name and number (URLs, CLI): see migration 0013.
    Index("ix_builds_job_name_number", "job_name", "number"),
    # The dashboard's trends: the finished builds of the last week (migration 0018).
    Index("ix_builds_finished_at", "finished_at"),
    # A job's builds in a state, newest first (migration 0018).
    Index("ix_builds_job_name_state_id", "job_name", "state", "id"),
)

build_steps = Table(
    "build_steps",
    metadata,
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("stage", String(500), nullable=False),
    Column("name", String(500), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("offset", BigInteger, nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("path", String(1000), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("blob_key", String(1200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("build_id", "path", name="uq_artifacts_build_path"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("labels", JSON, nullable=False),
    Column("executors", Integer, nullable=False),
    Column("version", String(50), nullable=False),
    Column("draining", Boolean, nullable=False, default=False),
    Column("registered_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("online", Boolean, nullable=False, default=True),
    Column("cpu_percent", Integer, nullable=True),
    Column("memory_percent", Integer, nullable=True),
    Column("metrics", JSON, nullable=True),
    # Elastic agents (store/pools.py, migration 0010): the pool an agent belongs to,
    # and whether it takes one build and exits.
    Column("pool", String(100), nullable=True),
    Column("ephemeral", Boolean, nullable=False, default=False, server_default=false()),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scope", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

controllers = Table(
    "controllers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("address", String(500), nullable=False),
    Column("version", String(50), nullable=False),
    Column("role", String(20), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

# Configuration as code, kinds beyond folders and jobs (migration 0015, docs/config-as-code.md).

#: Which config source manages an object of a kind kept in another feature's table
#: (pool, grant) or in the tables below (notifier, schedule). Jobs and folders keep
#: their own ``managed_repo`` columns.
config_managed = Table(
    "config_managed",
    metadata,
    Column("kind", String(20), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("managed_repo", String(2000), nullable=False),
    Column("managed_file", String(1000), nullable=False),
    Column("managed_commit", String(64), nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: Notifiers (and their rules) stored by a config apply; the notifications file's
#: notifiers are not stored (they are read at start).
notifiers = Table(
    "notifiers",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("document", JSON, nullable=False),  # a NotifierConfig without name and rules
    Column("rules", JSON, nullable=False),  # [{jobs: [...], on: [...]}]
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: Instance-wide settings stored by a config apply ("retention", "backup"): the keys a
#: document holds win over the controller's settings.
instance_settings = Table(
    "instance_settings",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("document", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
