"""Where the CLI finds the server URL and token: flags, then CONVEYOR_URL /
CONVEYOR_TOKEN, then the file ``conveyor up`` / ``conveyor server`` wrote
(``$CONVEYOR_HOME/cli.json``, default ``./.conveyor/cli.json``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CLI_FILE = "cli.json"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str


def default_home() -> Path:
    return Path(os.environ.get("CONVEYOR_HOME", ".conveyor"))


def write_cli_file(home: Path, url: str, token: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / CLI_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    return path


def read_cli_file(home: Path) -> dict[str, str]:
    try:
        data = json.loads((home / CLI_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in ("url", "token")}


def resolve(url: str | None, token: str | None) -> ClientConfig | None:
    saved = read_cli_file(default_home())
    final_url = url or os.environ.get("CONVEYOR_URL") or saved.get("url")
    final_token = token or os.environ.get("CONVEYOR_TOKEN") or saved.get("token")
    if not final_url or not final_token:
        return None
    return ClientConfig(final_url.rstrip("/"), final_token)
