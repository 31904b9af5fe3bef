"""`conveyor build publications BUILD`: where a build's publish steps put files."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from conveyor.cli.client import ApiClient
from conveyor.cli.options import TokenOpt, UrlOpt

out = Console()


def publications(
    build_id: int,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON answer")] = False,
) -> None:
    """List where the build's publish steps uploaded files."""
    client = ApiClient.from_options(url, token)
    rows = client.json("GET", f"/api/v1/builds/{build_id}/publications")
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"build {build_id} published nothing")
        return
    # One line each, never cut: destinations are meant to be copied.
    for p in rows:
        what = f"  {p['coordinates']}" if p["coordinates"] else ""
        out.print(
            f"{p['repository']:<6} {escape(p['file'] or '(generated POM)')} -> "
            f"{escape(p['url'])}  ({p['size']} B){escape(what)}",
            soft_wrap=True,
            highlight=False,
        )
