"""The `conveyor` command line (Typer). Commands hold no logic of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conveyor import __version__
from conveyor.cli import (
    admin,
    agent,
    backup,
    blobs,
    builds,
    cluster,
    config_repo,
    credentials,
    importer,
    jobs,
    lb,
    pools,
    retention,
    scaling,
)
from conveyor.cli import healthcheck as healthcheck_cli
from conveyor.core.dispatch import Strategy

app = typer.Typer(
    name="conveyor",
    help="Conveyor: self-hosted CI/CD. `conveyor up` starts everything on this machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs.app, name="job")
app.add_typer(builds.app, name="build")
app.add_typer(agent.app, name="agent")
app.add_typer(cluster.app, name="cluster")
app.add_typer(blobs.app, name="blobs")
app.add_typer(retention.app, name="retention")
app.add_typer(config_repo.app, name="config")
app.command("lb-config")(lb.lb_config)
app.command("healthcheck")(healthcheck_cli.healthcheck)
app.add_typer(credentials.app, name="credentials")
app.add_typer(pools.app, name="pool")
app.add_typer(scaling.app, name="scaling")
app.add_typer(admin.app, name="admin")
# Key commands of the credentials store live under `conveyor admin` too.
admin.app.command("gen-key")(credentials.gen_key)
admin.app.command("rotate-key")(credentials.rotate_key)
app.add_typer(backup.app, name="backup")
app.add_typer(backup.store_app, name="store")
app.command("restore")(backup.restore)
app.command("drill")(backup.drill)
app.add_typer(importer.app, name="import")

HomeOpt = Annotated[
    Path, typer.Option(envvar="CONVEYOR_HOME", help="state folder (SQLite, blobs, tokens)")
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format", envvar="CONVEYOR_LOG_FORMAT", help="console (default) or json lines"
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", envvar="CONVEYOR_DATABASE_URL", help="sqlite:///PATH or postgresql://..."
    ),
]


def _settings(**values: object) -> object:
    from pydantic import ValidationError

    from conveyor.cli.client import fail
    from conveyor.settings import Settings

    try:
        return Settings(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        fail(str(exc))


def _log_format(value: str | None) -> str | None:
    from conveyor.cli.client import fail

    if value is not None and value not in ("console", "json"):
        fail(f"--log-format must be console or json, not {value!r}")
    return value


@app.command()
def server(
    home: HomeOpt = Path(".conveyor"),
    database: DatabaseOpt = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8080,
    blob_dir: Annotated[Path | None, typer.Option(help="blob folder (default HOME/blobs)")] = None,
    blob_url: Annotated[
        str | None,
        typer.Option(
            envvar="CONVEYOR_BLOB_URL",
            help="blob store URL: file:///PATH or s3://BUCKET/PREFIX?endpoint=URL&region=R"
            " (wins over --blob-dir; docs/storage.md)",
        ),
    ] = None,
    strategy: Annotated[Strategy, typer.Option(help="dispatch strategy")] = Strategy.LABEL_MATCH,
    agent_timeout: Annotated[
        float, typer.Option(help="seconds without heartbeat → offline")
    ] = 15.0,
    role: Annotated[
        str, typer.Option(help="active, or standby (serve only /healthz until leader)")
    ] = "active",
    public_url: Annotated[
        str | None, typer.Option(help="URL other controllers and users reach this one at")
    ] = None,
    controller_id: Annotated[
        str | None, typer.Option(help="stable id in the cluster (default: host-random)")
    ] = None,
    lease_ttl: Annotated[float, typer.Option(help="leader lease TTL, seconds")] = 5.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    log_format: LogFormatOpt = None,
    secret_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="CONVEYOR_SECRET_KEY_FILE",
            help="credentials encryption key file (default: CONVEYOR_SECRET_KEY, or"
            " HOME/secret.key if it exists; docs/credentials.md)",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="CONVEYOR_TLS_CERT", help="PEM certificate: serve HTTPS")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="CONVEYOR_TLS_KEY", help="PEM private key of --tls-cert")
    ] = None,
) -> None:
    """Run a controller: REST API, agent protocol, dispatcher."""
    from conveyor.cli.client import fail
    from conveyor.cli.server import run_server

    if blob_url:
        from conveyor.blobs import open_blob_store, redact_url
        from conveyor.errors import InvalidInput

        try:
            open_blob_store(blob_url)  # checks the URL; makes no network call
        except InvalidInput as exc:
            fail(f"--blob-url {redact_url(blob_url)}: {exc}")
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            fail(f"{flag} {path}: no such file")

    settings = _settings(
        home=home,
        database_url=database,
        host=host,
        port=port,
        blob_dir=blob_dir,
        blob_url=blob_url,
        dispatch_strategy=strategy,
        agent_timeout=agent_timeout,
        role=role,
        public_url=public_url,
        controller_id=controller_id,
        lease_ttl=lease_ttl,
        log_level=log_level,
        secret_key_file=secret_key_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    run_server(settings, _log_format(log_format))  # type: ignore[arg-type]


@app.command()
def up(
    home: HomeOpt = Path(".conveyor"),
    port: Annotated[int, typer.Option(help="port (a free one if taken)")] = 8080,
    agents: Annotated[int, typer.Option(min=0, max=64, help="local agents to start")] = 2,
    executors: Annotated[int, typer.Option(min=1, max=64, help="executors per agent")] = 2,
    examples: Annotated[bool, typer.Option(help="load the example jobs")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "warning",
    log_format: LogFormatOpt = None,
) -> None:
    """Start Conveyor on this machine: a controller on SQLite plus local agents."""
    from conveyor.cli.server import run_up
    from conveyor.credentials.keys import DEFAULT_KEY_FILE, create_key_file

    settings = _settings(home=home, port=port, log_level=log_level)
    if not (getattr(settings, "secret_key", None) or getattr(settings, "secret_key_file", None)):
        # No key configured: `up` makes its own, once (HOME/secret.key, mode 0600).
        create_key_file(home / DEFAULT_KEY_FILE)
    run_up(settings, agents, executors, examples, _log_format(log_format))  # type: ignore[arg-type]


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
