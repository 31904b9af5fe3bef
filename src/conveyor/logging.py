"""Structured logs (structlog): key=value on a terminal, JSON lines with
``--log-format json`` (or CONVEYOR_LOG_FORMAT=json) for log shippers.

Every event carries time (ISO 8601, UTC), level and event name; context bound
with structlog's contextvars rides along: ``controller`` (set at start),
``request_id`` and ``user`` (per request), ``build_id`` where a build is
concerned. Errors carry their stack trace in ``exception``."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    # Libraries speak only when something is wrong.
    for noisy in ("httpx", "httpcore", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: structlog.typing.Processor
    fmt = (
        fmt
        or os.environ.get("CONVEYOR_LOG_FORMAT")
        or ("json" if os.environ.get("CONVEYOR_LOG_JSON") == "1" else "console")
    )
    if fmt not in ("console", "json"):
        raise ValueError(f"log format must be console or json, not {fmt!r}")
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Libraries' own log records (uvicorn, SQLAlchemy…) get the same format and context.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
