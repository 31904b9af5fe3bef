"""`conveyor pool add|list|show|set|rm`: agent pools and their autoscaling policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(
    help="Manage agent pools (elastic agents, docs/scaling.md).", no_args_is_help=True
)
out = Console()

FileOpt = Annotated[
    Path | None,
    typer.Option("-f", "--file", help="pool YAML (name, labels, min, max, provider, policy…)"),
]
LabelsOpt = Annotated[str | None, typer.Option(help="comma-separated labels the pool serves")]
MinOpt = Annotated[int | None, typer.Option("--min", help="fewest agents")]
MaxOpt = Annotated[int | None, typer.Option("--max", help="most agents")]
ExecutorsOpt = Annotated[int | None, typer.Option(help="executors per agent")]
ProviderOpt = Annotated[str | None, typer.Option(help="local, command, docker or kubernetes")]
ProviderConfigOpt = Annotated[
    str | None, typer.Option(help="provider config: JSON, or @FILE (YAML or JSON)")
]
PolicyOpt = Annotated[
    Path | None, typer.Option(help="policy YAML (a policy mapping, or a whole pool file)")
]
EphemeralOpt = Annotated[
    bool | None, typer.Option("--ephemeral/--long-lived", help="agents take one build each")
]


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        fail(f"{path} is not valid YAML: {exc}")


def _provider_config(value: str) -> Any:
    if value.startswith("@"):
        return _load_yaml(Path(value[1:]))
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        fail(f"--provider-config is not JSON: {exc}")


def _body(
    file: Path | None,
    labels: str | None,
    min_size: int | None,
    max_size: int | None,
    executors: int | None,
    provider: str | None,
    provider_config: str | None,
    policy: Path | None,
    ephemeral: bool | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if file is not None:
        document = _load_yaml(file)
        if not isinstance(document, dict):
            fail(f"{file}: a pool file is a mapping")
        body.update(document)
    if policy is not None:
        document = _load_yaml(policy)
        if not isinstance(document, dict):
            fail(f"{policy}: a policy file is a mapping")
        if "policy" in document:  # a whole pool file: take its policy and bounds
            for key in ("min", "max"):
                if key in document:
                    body.setdefault(key, document[key])
            document = document["policy"] or {}
        body["policy"] = document
    flags = {
        "labels": None if labels is None else [x.strip() for x in labels.split(",") if x.strip()],
        "min": min_size,
        "max": max_size,
        "executors": executors,
        "provider": provider,
        "provider_config": None if provider_config is None else _provider_config(provider_config),
        "ephemeral": ephemeral,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    return body


@app.command("add")
def add(
    name: Annotated[str | None, typer.Argument(help="pool name (or in --file)")] = None,
    file: FileOpt = None,
    labels: LabelsOpt = None,
    min_size: MinOpt = None,
    max_size: MaxOpt = None,
    executors: ExecutorsOpt = None,
    provider: ProviderOpt = None,
    provider_config: ProviderConfigOpt = None,
    policy: PolicyOpt = None,
    ephemeral: EphemeralOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a pool (the autoscaler starts its minimum of agents right away)."""
    body = _body(
        file, labels, min_size, max_size, executors, provider, provider_config, policy, ephemeral
    )
    if name is not None:
        body["name"] = name
    if "name" not in body:
        fail("a pool needs a name: `conveyor pool add NAME …` or `name:` in --file")
    pool = ApiClient.from_options(url, token).json("POST", "/api/v1/pools", json=body)
    out.print(
        f"created pool [bold]{pool['name']}[/] ({pool['provider']}, {pool['min']}–{pool['max']}"
        f" agents, labels {','.join(pool['labels']) or '-'})"
    )


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="pool name")],
    file: FileOpt = None,
    labels: LabelsOpt = None,
    min_size: MinOpt = None,
    max_size: MaxOpt = None,
    executors: ExecutorsOpt = None,
    provider: ProviderOpt = None,
    provider_config: ProviderConfigOpt = None,
    policy: PolicyOpt = None,
    ephemeral: EphemeralOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a pool: only the fields given change."""
    body = _body(
        file, labels, min_size, max_size, executors, provider, provider_config, policy, ephemeral
    )
    body.pop("name", None)
    if not body:
        fail("nothing to change: give --min, --max, --labels, --policy, … or --file")
    pool = ApiClient.from_options(url, token).json("PATCH", f"/api/v1/pools/{name}", json=body)
    out.print(f"updated pool [bold]{pool['name']}[/] ({pool['min']}–{pool['max']} agents)")


@app.command("list")
def list_(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """List pools with their size and bounds."""
    table = Table("name", "provider", "size", "min", "max", "labels", "ephemeral")
    for p in ApiClient.from_options(url, token).json("GET", "/api/v1/pools"):
        table.add_row(
            p["name"],
            p["provider"],
            str(p["size"]),
            str(p["min"]),
            str(p["max"]),
            ",".join(p["labels"]),
            "yes" if p["ephemeral"] else "no",
        )
    out.print(table)


@app.command("show")
def show(
    name: str,
    decisions: Annotated[int, typer.Option(help="recent decisions to show")] = 10,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A pool: settings, agents, agents starting, recent autoscaling decisions."""
    client = ApiClient.from_options(url, token)
    p = client.json("GET", f"/api/v1/pools/{name}")
    out.print(
        f"[bold]{p['name']}[/]  provider {p['provider']}  size {p['size']}"
        f" (min {p['min']}, max {p['max']})  executors {p['executors']}"
        f"  labels {','.join(p['labels']) or '-'}  ephemeral {p['ephemeral']}"
    )
    if p["policy"]:
        out.print("policy:", json.dumps(p["policy"]), highlight=False)
    table = Table("agent", "state", "busy")
    for a in p["agents"]:
        table.add_row(a["name"], a["state"], f"{a['busy']}/{a['executors']}")
    for starting in p["starting"]:
        table.add_row(starting, "starting", "")
    out.print(table)
    _print_decisions(
        client.json("GET", f"/api/v1/pools/{name}/decisions", params={"limit": decisions})
    )


def _print_decisions(rows: list[dict[str, Any]]) -> None:
    table = Table("at", "size", "rule", "reason")
    for d in rows:
        table.add_row(d["at"], f"{d['current']} → {d['target']}", d["rule"], d["reason"])
    out.print(table)


@app.command("rm")
def rm(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Delete a pool without agents (set --max 0 first and wait for them to stop)."""
    ApiClient.from_options(url, token).request("DELETE", f"/api/v1/pools/{name}")
    out.print(f"deleted pool {name}")
