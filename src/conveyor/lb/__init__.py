"""Load-balancer configurations for a cluster of controllers (nginx, HAProxy).

``render`` holds the pure renderers; ``prepare_prefix_dir`` creates the folders a
configuration rendered with ``prefix_dir`` expects (pid file, logs, temporary files)."""

from __future__ import annotations

from pathlib import Path

from conveyor.lb.render import (
    Endpoint,
    LbConfigError,
    LbOptions,
    Sticky,
    parse_endpoint,
    render,
    render_haproxy,
    render_nginx,
)

__all__ = [
    "Endpoint",
    "LbConfigError",
    "LbOptions",
    "Sticky",
    "parse_endpoint",
    "prepare_prefix_dir",
    "render",
    "render_haproxy",
    "render_nginx",
]


def prepare_prefix_dir(prefix_dir: Path) -> Path:
    """Create PREFIX, PREFIX/logs and PREFIX/temp (nginx creates the folders below)."""
    for path in (prefix_dir, prefix_dir / "logs", prefix_dir / "temp"):
        path.mkdir(parents=True, exist_ok=True)
    return prefix_dir
