"""Controller settings: read once (flags > environment > defaults) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor.core.dispatch import Strategy


class Settings(BaseSettings):
    """Everything a controller needs to start. Environment variables use ``CONVEYOR_``."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    home: Path = Field(default=Path(".conveyor"), description="state folder (SQLite, blobs)")
    database_url: str | None = Field(
        default=None, description="sqlite:///path or postgresql://...; default: SQLite in home"
    )
    blob_dir: Path | None = Field(default=None, description="blob folder; default: home/blobs")
    blob_url: str | None = Field(
        default=None,
        description="blob store URL: file:///PATH or s3://BUCKET/PREFIX?endpoint=...;"
        " wins over blob_dir (docs/storage.md)",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    controller_id: str | None = None
    role: Literal["active", "standby"] = Field(
        default="active",
        description="standby: serve only /healthz until this controller is the leader",
    )
    agent_timeout: float = Field(default=15.0, gt=0, description="seconds without heartbeat")
    lease_ttl: float = Field(default=5.0, gt=0)
    dispatch_strategy: Strategy = Strategy.LABEL_MATCH
    poll_timeout: float = Field(default=25.0, gt=0, description="agent long-poll hold, seconds")
    notifications_file: Path | None = Field(
        default=None, description="notifiers and global notification rules (YAML)"
    )
    artifact_keep_last: int | None = Field(
        default=None,
        ge=1,
        description="finished builds per job that keep their artifacts; unset: no count limit",
    )
    artifact_keep_days: int | None = Field(
        default=30, ge=0, description="days a finished build keeps its artifacts"
    )
    log_level: str = "info"
    failure_patterns_file: Path | None = Field(
        default=None,
        description="YAML file of failure patterns tried before the shipped ones "
        "(docs/failure-analysis.md)",
    )
    slow_request_seconds: float = Field(
        default=2.0,
        gt=0,
        description="log requests slower than this (request.slow); long-polls and streams "
        "never count",
    )

    backup_target: str | None = Field(
        default=None,
        description="where backups go: a folder or s3://BUCKET/PREFIX?...; default: home/backups"
        " (docs/backup.md)",
    )
    backup_full_cron: str | None = Field(
        default=None, description="cron expression (UTC) for scheduled full backups, e.g. 0 2 * * 0"
    )
    backup_incremental_cron: str | None = Field(
        default=None, description="cron expression (UTC) for scheduled incremental backups"
    )
    backup_prune_cron: str | None = Field(
        default=None, description="cron expression (UTC) for pruning old backups"
    )
    backup_keep_weekly_fulls: int = Field(default=4, ge=1, description="weekly full backups kept")
    backup_keep_incremental_days: int = Field(
        default=30, ge=0, description="days incremental backups are kept"
    )
    backup_artifacts: bool = Field(default=True, description="scheduled backups include artifacts")
    backup_secret_files: list[Path] = Field(
        default_factory=list,
        description="files scheduled backups keep encrypted (e.g. the credentials key file);"
        " needs backup_passphrase",
    )
    backup_passphrase: str | None = Field(
        default=None,
        description="passphrase sealing backup_secret_files (CONVEYOR_BACKUP_PASSPHRASE)",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'conveyor.db').resolve()}"

    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.home / "blobs").resolve()

    @field_validator("backup_full_cron", "backup_incremental_cron", "backup_prune_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (e.g. '0 2 * * *')")
        return value

    def resolved_backup_target(self) -> str:
        return self.backup_target or str((self.home / "backups").resolve())
