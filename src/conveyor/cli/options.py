"""Options shared by the client commands."""

from __future__ import annotations

from typing import Annotated

import typer

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="controller URL (env CONVEYOR_URL)", show_default=False)
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="API token (env CONVEYOR_TOKEN)", show_default=False),
]
