"""`conveyor config apply|diff|export`: configuration as code (docs/config-as-code.md).

`apply DIR` reads the folder's YAML files and sends them to the controller, which
validates all of them and applies them in one transaction; `--repo URL [--ref REF]`
makes the controller fetch the repository itself. The commit recorded is the
folder's git HEAD (when it is a clean git work tree) or the fetched commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Configuration as code: apply, diff, export.", no_args_is_help=True)
out = Console(soft_wrap=True)

RepoOpt = Annotated[
    str | None, typer.Option("--repo", help="config repository URL (the controller fetches it)")
]
RefOpt = Annotated[str, typer.Option("--ref", help="branch of --repo")]
CredentialOpt = Annotated[
    str | None,
    typer.Option(
        "--credential", help="id of the stored credential the controller fetches --repo with"
    ),
]
_COLOURS = {"create": "green", "update": "yellow", "release": "magenta", "unchanged": "dim"}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _read_folder(folder: Path) -> tuple[dict[str, str], str, str | None]:
    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    paths = sorted(
        p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml") and ".git" not in p.parts
    )
    files: dict[str, str] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("reading configuration", total=len(paths))
        for path in paths:
            try:
                files[path.relative_to(folder).as_posix()] = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"cannot read {path}: {exc}")
            progress.advance(task)
    commit = None
    source = str(folder.resolve())
    if _git(folder, "rev-parse", "--is-inside-work-tree") == "true":
        clean = _git(folder, "status", "--porcelain", "--", ".") == ""
        head = _git(folder, "rev-parse", "HEAD")
        commit = head if clean else None  # an uncommitted change has no commit to name
        remote = _git(folder, "remote", "get-url", "origin")
        source = remote or source
    return files, source, commit


def _body(
    folder: Path | None, repo: str | None, ref: str, dry_run: bool, credential: str | None = None
) -> dict[str, Any]:
    if (folder is None) == (repo is None):
        fail("give a folder or --repo URL (one of them)")
    if credential is not None and repo is None:
        fail("--credential goes with --repo (a folder is read here, not fetched)")
    if repo is not None:
        return {"repo": repo, "ref": ref, "dry_run": dry_run, "credential": credential}
    assert folder is not None
    files, source, commit = _read_folder(folder)
    return {"files": files, "source": source, "commit": commit, "dry_run": dry_run}


def _print_changes(result: dict[str, Any], verbose: bool) -> None:
    for change in result["changes"]:
        if change["action"] == "unchanged" and not verbose:
            continue
        colour = _COLOURS[change["action"]]
        where = f" ({change['file']})" if change["file"] else ""
        out.print(f"[{colour}]{change['action']:>9}[/] {change['kind']} {change['name']}{where}")
    counts: dict[str, int] = {}
    for change in result["changes"]:
        counts[change["action"]] = counts.get(change["action"], 0) + 1
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing declared"
    out.print(summary)


@app.command("apply")
def apply(
    folder: Annotated[Path | None, typer.Argument(help="folder of YAML files")] = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    credential: CredentialOpt = None,
    verbose: Annotated[bool, typer.Option("-v", help="list unchanged objects too")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Validate everything, then apply it all in one transaction (or nothing)."""
    body = _body(folder, repo, ref, False, credential)
    client = ApiClient.from_options(url, token)
    result = client.json("POST", "/api/v1/config/apply", json=body, timeout=300)
    _print_changes(result, verbose)
    commit = f" at {result['commit'][:12]}" if result.get("commit") else ""
    out.print(f"applied {result['source']}{commit}")


@app.command("diff")
def diff(
    folder: Annotated[Path | None, typer.Argument(help="folder of YAML files")] = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    credential: CredentialOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show what `apply` would change (exit status 1 if anything would)."""
    body = _body(folder, repo, ref, True, credential)
    client = ApiClient.from_options(url, token)
    result = client.json("POST", "/api/v1/config/apply", json=body, timeout=300)
    _print_changes(result, False)
    if any(c["action"] != "unchanged" for c in result["changes"]):
        raise typer.Exit(1)


@app.command("export")
def export(
    folder: Annotated[Path, typer.Argument(help="folder to write the YAML files into")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write the running configuration as the YAML files `apply` reads."""
    client = ApiClient.from_options(url, token)
    files: dict[str, str] = client.json("GET", "/api/v1/config/export")["files"]
    root = folder.resolve()
    with Progress(transient=True) as progress:
        task = progress.add_task("writing configuration", total=len(files))
        for rel, text in files.items():
            target = (root / rel).resolve()
            if not target.is_relative_to(root):
                fail(f"refusing to write outside {folder}: {rel}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            except OSError as exc:
                fail(f"cannot write {target}: {exc.strerror}")
            progress.advance(task)
    out.print(f"wrote {len(files)} file(s) to {folder}")


@app.command("instance")
def instance(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show the instance schedules in effect (retention defaults, backup schedules) and
    where each value comes from: the config repository or the controller settings."""
    client = ApiClient.from_options(url, token)
    result: dict[str, Any] = client.json("GET", "/api/v1/config/instance")
    for name, section in result.items():
        where = (
            f"managed in {section['managed_repo']} ({section['managed_file']})"
            if section["managed_repo"]
            else ("stored, no longer managed" if section["stored"] else "not applied")
        )
        out.print(f"[bold]schedules/{name}.yml[/]: {where}")
        for key, field in section["fields"].items():
            out.print(f"  {key:<24} {field['value']!s:<16} [dim]{field['source']}[/]")
