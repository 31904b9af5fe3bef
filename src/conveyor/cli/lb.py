"""`conveyor lb-config nginx|haproxy`: print a load-balancer configuration for controllers."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from conveyor.cli.client import fail
from conveyor.lb import (
    LbConfigError,
    LbOptions,
    Sticky,
    parse_endpoint,
    prepare_prefix_dir,
    render,
)

err = Console(stderr=True)


class LbKind(enum.StrEnum):
    NGINX = "nginx"
    HAPROXY = "haproxy"


def lb_config(
    kind: Annotated[LbKind, typer.Argument(help="nginx or haproxy", show_default=False)],
    controller: Annotated[
        list[str] | None,
        typer.Option(
            "--controller",
            "-c",
            help="a controller's HOST:PORT (IPv6: [::1]:PORT); repeat for each controller",
            show_default=False,
        ),
    ] = None,
    backup: Annotated[
        list[str] | None,
        typer.Option(
            "--backup",
            help="HOST:PORT of a backup controller, used only when all others are down; repeat",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT clients connect to (default 0.0.0.0:80, or 0.0.0.0:443 with TLS)",
            show_default=False,
        ),
    ] = None,
    http_redirect: Annotated[
        str | None,
        typer.Option(
            help="with TLS: HOST:PORT of the plain-HTTP listener that redirects to HTTPS"
            " (default: port 80 on the --listen host)",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="enable HTTPS. nginx: the certificate (chain) PEM, with --tls-key."
            " haproxy: ONE PEM holding certificate chain AND private key"
            " (cat cert.pem key.pem > combined.pem), without --tls-key",
            show_default=False,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="nginx: the private key PEM for --tls-cert", show_default=False),
    ] = None,
    sticky: Annotated[
        Sticky | None,
        typer.Option(
            help="session affinity by client ip or by cookie (not needed: controllers"
            " are stateless)",
            show_default=False,
        ),
    ] = None,
    prefix_dir: Annotated[
        Path | None,
        typer.Option(
            help="put pid file, logs and temporary files under this folder (created if"
            " missing) instead of the standard system paths: for running your own instance",
            show_default=False,
        ),
    ] = None,
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground",
            help="run in the foreground under a supervisor: nginx `daemon off;`,"
            " haproxy logs to stdout (run it with `haproxy -db -f FILE`)",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write to this file instead of stdout"),
    ] = None,
) -> None:
    """Print a production nginx or HAProxy configuration for a set of controllers."""
    try:
        options = LbOptions(
            controllers=tuple(parse_endpoint(c, "--controller") for c in controller or []),
            backups=tuple(parse_endpoint(b, "--backup") for b in backup or []),
            listen=parse_endpoint(listen, "--listen") if listen is not None else None,
            http_redirect=(
                parse_endpoint(http_redirect, "--http-redirect")
                if http_redirect is not None
                else None
            ),
            tls_cert=tls_cert.absolute() if tls_cert is not None else None,
            tls_key=tls_key.absolute() if tls_key is not None else None,
            sticky=sticky,
            prefix_dir=prefix_dir.absolute() if prefix_dir is not None else None,
            foreground=foreground,
        )
        text = render(kind.value, options)
    except LbConfigError as exc:
        fail(str(exc))
    try:
        if options.prefix_dir is not None:
            prepare_prefix_dir(Path(options.prefix_dir))
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
    except OSError as exc:
        fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}")
    if output is None:
        typer.echo(text, nl=False)
    else:
        err.print(f"wrote {kind.value} configuration to {output}", highlight=False)
