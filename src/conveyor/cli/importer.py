"""`conveyor import jenkinsfile FILE > conveyor.yml`: translate a declarative
Jenkinsfile (docs/migrating-from-jenkins.md). The pipeline goes to standard output,
what was not translated to standard error, one `FILE:LINE: message` per construct."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.client import fail

app = typer.Typer(help="Import pipelines from other CI systems.", no_args_is_help=True)


@app.command("jenkinsfile")
def jenkinsfile(
    path: Annotated[Path, typer.Argument(help="The declarative Jenkinsfile to translate.")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Job name (default: the Jenkinsfile's folder name)."),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit with status 3 when anything was not translated.")
    ] = False,
) -> None:
    """Translate a declarative Jenkinsfile into conveyor.yml (printed on stdout)."""
    from conveyor.core.jenkinsfile import (
        GroovySyntaxError,
        dump_yaml,
        job_name_from,
        translate_jenkinsfile,
    )
    from conveyor.core.pipeline import SpecError, parse_pipeline

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    job = name or job_name_from(path.resolve().parent.name)
    try:
        translation = translate_jenkinsfile(text, job)
    except GroovySyntaxError as exc:
        fail(f"{path}:{exc.line}: {exc.message}")
    output = dump_yaml(translation, source=path.name)
    try:
        parse_pipeline(output, filename="conveyor.yml")
    except SpecError as exc:
        fail(f"the translated pipeline is not valid:\n{exc}")
    typer.echo(output, nl=False)
    for issue in translation.issues:
        typer.echo(f"{path.name}:{issue.line}: not translated: {issue.message}", err=True)
    if translation.issues:
        typer.echo(f"{len(translation.issues)} construct(s) not translated", err=True)
        if strict:
            raise typer.Exit(3)
