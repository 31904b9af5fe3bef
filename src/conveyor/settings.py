"""Controller settings: read once (flags > environment > defaults) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    build_keep_last: int | None = Field(
        default=None,
        ge=1,
        description="finished builds kept per job (older ones are deleted whole, logs and "
        "artifacts included); unset: no count limit (docs/retention.md)",
    )
    build_keep_days: int | None = Field(
        default=None,
        ge=1,
        description="days a finished build is kept before it is deleted whole; unset: no age limit",
    )
    retention_keep_released: bool = Field(
        default=True,
        description="retention never deletes a released build (one a publish step published "
        "from), nor its artifacts",
    )
    log_limit_mb: int | None = Field(
        default=1024,
        ge=1,
        description="most log megabytes per build (a job's log_limit wins); the rest is "
        "dropped with one line; unset: no limit",
    )
    jenkins_metrics: bool = Field(
        default=False,
        description="also expose the Jenkins Prometheus plugin's main names "
        "(default_jenkins_up, default_jenkins_executors_*, default_jenkins_builds_*)",
    )
    log_level: str = "info"
    #: The first admin token, for deployments that hand it in from a secret store
    #: (Kubernetes/Docker secrets) instead of reading it from the first controller's home.
    admin_token: str | None = Field(
        default=None, description="admin token to create on an empty database (env only)"
    )
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

    secret_key: SecretStr | None = Field(
        default=None,
        description="credentials encryption key, base64 of 32 bytes (env CONVEYOR_SECRET_KEY)",
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="file holding the credentials key; default: HOME/secret.key if it exists"
        " (docs/credentials.md)",
    )
    scm_poll_interval: float = Field(
        default=60.0,
        gt=0,
        description="default seconds between `git ls-remote` polls (docs/triggers.md)",
    )
    trigger_interval: float = Field(
        default=5.0, gt=0, description="seconds between the leader's trigger checks (cron, polling)"
    )
    webhook_secret: str | None = Field(
        default=None,
        description="global webhook secret (HMAC key / token) for /api/v1/webhooks"
        " (docs/triggers.md)",
    )
    config_repo: str | None = Field(
        default=None, description="config repository URL kept in sync (docs/config-as-code.md)"
    )
    config_ref: str = Field(default="main", description="branch of the config repository")
    config_repo_credential: str | None = Field(
        default=None,
        description="id of the stored credential to fetch the config repository with",
    )
    config_sync_interval: float | None = Field(
        default=None, gt=0, description="seconds between config repository syncs; unset: off"
    )
    autoscale_interval: float = Field(
        default=5.0, gt=0, description="seconds between autoscaler steps (docs/scaling.md)"
    )
    agent_launch_timeout: float = Field(
        default=120.0,
        gt=0,
        description="seconds a provider-started agent has to register before it is deleted",
    )
    # Security (docs/security.md)
    login_max_failures: int = Field(
        default=5, ge=1, description="wrong passwords in a row that lock an account"
    )
    login_lockout_seconds: float = Field(
        default=60.0, ge=0, description="how long a locked account stays locked"
    )
    session_hours: float = Field(default=12.0, gt=0, description="browser session lifetime")
    max_request_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="largest request body (artifact uploads stream and are exempt)",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key for tls_cert")
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
