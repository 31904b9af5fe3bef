"""`conveyor credentials add|list|rm` (through the API) and the key tools
`conveyor admin rotate-key|gen-key` (straight on the database, like migrations).

Values are read from ``--value``, ``--from-file``, standard input, or a hidden
prompt; they are sent once and never printed (docs/credentials.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(
    help="Encrypted credentials bound into builds (docs/credentials.md).", no_args_is_help=True
)
admin_app = typer.Typer(help="Administration: credentials key tools.", no_args_is_help=True)
out = Console()

KINDS = ("text", "username_password", "file", "ssh_key")


def _read_value(kind: str, value: str | None, from_file: Path | None, prompt: str) -> str:
    """The secret from exactly one source. Text kinds lose one trailing newline (what
    `echo` and editors add); file and ssh_key contents are kept byte for byte."""
    if value is not None and from_file is not None:
        fail("give the value with --value or --from-file, not both")
    if from_file is not None:
        try:
            text = from_file.read_bytes().decode("utf-8")
        except OSError as exc:
            fail(f"cannot read {from_file}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            fail(f"{from_file} is not UTF-8 text; credentials hold text only")
    elif value is not None:
        text = value
    elif sys.stdin is not None and sys.stdin.isatty():
        text = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    else:
        text = sys.stdin.read() if sys.stdin is not None else ""
    if kind in ("text", "username_password") and text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if not text:
        fail("the value is empty")
    return text


@app.command("add")
def add(
    cred_id: Annotated[str, typer.Argument(metavar="ID", help="e.g. team-a/deploy-key")],
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="text, username_password, file or ssh_key")
    ] = "text",
    value: Annotated[
        str | None,
        typer.Option(help="the secret (visible in the process list: prefer a file or stdin)"),
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="read the secret from this file")
    ] = None,
    username: Annotated[
        str | None, typer.Option(help="username of a username_password credential")
    ] = None,
    description: Annotated[str | None, typer.Option(help="what it is for")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="replace the value of an existing credential")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Store a credential (encrypted by the controller). Without --value/--from-file the
    secret is read from standard input, or asked for with a hidden prompt."""
    if kind not in KINDS:
        fail(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "username_password" and not username:
        fail("a username_password credential needs --username")
    if kind != "username_password" and username is not None:
        fail(f"--username is only for username_password credentials, not {kind}")
    client = ApiClient.from_options(url, token)
    secret = _read_value(kind, value, from_file, "Password" if username else "Secret value")
    body: dict[str, str | None] = {"kind": kind, "description": description}
    if kind == "username_password":
        body.update(username=username, password=secret)
    else:
        body["value"] = secret
    if replace:
        record = client.json("PUT", f"/api/v1/credentials/{cred_id}", json=body)
        out.print(f"replaced the value of credential [bold]{record['id']}[/]")
    else:
        record = client.json("POST", "/api/v1/credentials", json={"id": cred_id, **body})
        out.print(f"stored credential [bold]{record['id']}[/] ({record['kind']})")


@app.command("list")
def list_all(
    prefix: Annotated[str | None, typer.Option(help="only this folder, e.g. team-a/")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List credentials (never their values)."""
    client = ApiClient.from_options(url, token)
    items = client.json("GET", "/api/v1/credentials", params={"prefix": prefix} if prefix else {})
    table = Table("id", "kind", "description", "key", "updated")
    for c in items:
        table.add_row(c["id"], c["kind"], c["description"] or "", c["key_id"], c["updated_at"])
    out.print(table)


@app.command("rm")
def remove(
    cred_id: Annotated[str, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a credential. Builds that bind it fail at trigger time afterwards."""
    if not yes:
        typer.confirm(f"Delete credential {cred_id}?", abort=True)
    client = ApiClient.from_options(url, token)
    client.request("DELETE", f"/api/v1/credentials/{cred_id}")
    out.print(f"deleted credential [bold]{cred_id}[/]")


@admin_app.command("gen-key")
def gen_key(
    out_file: Annotated[Path, typer.Argument(metavar="FILE", help="where to write the key")],
) -> None:
    """Write a new random credentials key (base64, mode 0600); never overwrites."""
    from conveyor.credentials.keys import create_key_file

    try:
        created = create_key_file(out_file)
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror or exc}")
    if not created:
        fail(f"{out_file} exists; refusing to overwrite a key")
    out.print(f"wrote a new key to [bold]{out_file}[/] (keep it secret; back it up)")


@admin_app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[
        Path, typer.Option("--new-key-file", help="the new key (make one with `admin gen-key`)")
    ],
    home: Annotated[Path, typer.Option(envvar="CONVEYOR_HOME", help="state folder")] = Path(
        ".conveyor"
    ),
    database: Annotated[
        str | None,
        typer.Option("--database", envvar="CONVEYOR_DATABASE_URL", help="default: HOME's SQLite"),
    ] = None,
    secret_key_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-key-file",
            envvar="CONVEYOR_SECRET_KEY_FILE",
            help="the current key (default: CONVEYOR_SECRET_KEY or HOME/secret.key)",
        ),
    ] = None,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="afterwards, put the new key in place of the current key file",
        ),
    ] = False,
) -> None:
    """Re-encrypt every credential with a new key, in one transaction: all or nothing.
    Restart the controllers with the new key afterwards; the old one is no longer needed."""
    from conveyor.cli.main import _settings
    from conveyor.credentials.keys import DEFAULT_KEY_FILE, SecretKey, load_key_file
    from conveyor.credentials.rotation import RotationError, rotate
    from conveyor.credentials.service import NO_KEY, load_secret_key
    from conveyor.settings import Settings

    settings = _settings(home=home, database_url=database, secret_key_file=secret_key_file)
    assert isinstance(settings, Settings)
    try:
        old = load_secret_key(settings)
        new = SecretKey(load_key_file(new_key_file))
    except ValueError as exc:
        fail(str(exc))
    if old is None:
        fail(NO_KEY)
    if old.key_id == new.key_id:
        fail("the new key is the current key; make a new one with `conveyor admin gen-key`")
    try:
        count = rotate(settings.resolved_database_url(), old, new)
    except (RotationError, ValueError) as exc:
        fail(f"{exc}; nothing was changed")
    out.print(f"re-encrypted {count} credential(s) with key [bold]{new.key_id}[/]")
    current_file = settings.secret_key_file or (
        home / DEFAULT_KEY_FILE if settings.secret_key is None else None
    )
    if install and current_file is not None:
        tmp = current_file.with_name(current_file.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key_file.read_text())
        os.replace(tmp, current_file)
        out.print(f"installed the new key as {current_file}")
    out.print("Restart every controller with the new key; the old key is no longer needed.")
