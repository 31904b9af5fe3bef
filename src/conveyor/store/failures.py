"""Failure analysis rows: a finished build's failure category, detail and cause.

Kept out of ``store.py`` (the named queries stay one module per concern); these
functions use the store's write/read transactions like its own methods do.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import case, or_, select, update

from conveyor.errors import NotFound
from conveyor.store.schema import builds
from conveyor.store.store import Store

#: Causes that a failure analysis may replace: none yet, or the generic one the
#: store derives from the first failed step ("step 'sh: make' in stage build
#: failed with exit code 2"). "agent lost" and "cancelled by ..." are kept.
GENERIC_CAUSE_PREFIX = "step '"
MAX_DETAIL_CHARS = 8000


async def record_failure_analysis(
    store: Store,
    build_id: int,
    category: str,
    cause: str | None,
    detail: dict[str, Any],
) -> None:
    """Store a build's failure analysis (one UPDATE; repeating it is harmless).

    ``cause`` (when not None) replaces the build's cause only if that is empty or
    the generic failed-step cause. Raises NotFound for an unknown build."""
    values: dict[str, Any] = {
        "failure_category": category[:50],
        "failure_detail": _detail_json(detail),
    }
    if cause is not None:
        values["cause"] = case(
            (
                or_(builds.c.cause.is_(None), builds.c.cause.like(f"{GENERIC_CAUSE_PREFIX}%")),
                cause.replace("\x00", ""),  # PostgreSQL text cannot hold NUL
            ),
            else_=builds.c.cause,
        )
    async with store.write() as conn:
        result = await conn.execute(update(builds).where(builds.c.id == build_id).values(values))
    if result.rowcount == 0:
        raise NotFound(f"build {build_id} not found")


async def get_failure_analysis(store: Store, build_id: int) -> tuple[str, dict[str, Any]] | None:
    """(category, detail) of a build, or None when it has not been analysed.
    Raises NotFound for an unknown build."""
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(builds.c.failure_category, builds.c.failure_detail).where(
                    builds.c.id == build_id
                )
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"build {build_id} not found")
    if row.failure_category is None:
        return None
    detail: dict[str, Any] = {}
    if row.failure_detail:
        try:
            loaded = json.loads(row.failure_detail)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            detail = loaded
    return str(row.failure_category), detail


def _detail_json(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) <= MAX_DETAIL_CHARS:
        return text
    # Too long (a huge custom field): keep the small fields, shorten the strings.
    short = {
        k: (v[:500] + "…" if isinstance(v, str) and len(v) > 500 else v) for k, v in detail.items()
    }
    text = json.dumps(short, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) <= MAX_DETAIL_CHARS:
        return text
    return json.dumps({"truncated": True, "pattern": str(detail.get("pattern"))[:200]})
