"""Per-build log size limit: parsing sizes, and where to cut. Pure.

A build whose log would exceed its limit keeps the first ``limit`` bytes, then one
line :func:`truncation_line`; everything after is dropped and the build goes on.
The limit is the job's ``log_limit`` (conveyor.yml) or the controller's
``log_limit_mb`` setting, fixed into the build's plan when the build is queued.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic_core import PydanticCustomError

__all__ = ["MAX_LOG_LIMIT", "MIN_LOG_LIMIT", "format_size", "parse_size", "truncation_line"]

MIN_LOG_LIMIT = 1024  # bytes: smaller is a typo, not a policy
MAX_LOG_LIMIT = 1024**4  # 1 TiB
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: Any) -> int:
    """Bytes from an int (bytes) or a string like ``"500KB"``, ``"100 MB"``, ``"2GiB"``
    (binary units: 1 MB = 1024 KB, as log sizes are shown)."""
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        unit = (match.group(2) or "").lower()[:1]
        size = float(match.group(1)) * _UNITS[unit]
    if size is None:
        raise PydanticCustomError(
            "size", f"invalid size {value!r}: use bytes (1048576) or a string like 500KB, 100MB"
        )
    if not MIN_LOG_LIMIT <= size <= MAX_LOG_LIMIT:
        raise PydanticCustomError("size", f"size {value!r} must be between 1 KB and 1 TB")
    return int(size)


def format_size(n: int) -> str:
    """``104857600`` -> ``"100 MB"`` (whole units when exact, else one decimal)."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if n % factor == 0 else f"{value:.1f} {unit}"
    return f"{n} B"


def truncation_line(limit: int, source: str) -> bytes:
    """The one line that ends a truncated log; ``source`` says where the limit comes
    from (``job log_limit`` or ``controller log_limit_mb``)."""
    return (
        f"[conveyor] log truncated at {format_size(limit)} (limit {format_size(limit)}, "
        f"{source}); later output is dropped, the build goes on\n"
    ).encode()
