"""The controller's own guard on a build's log size, behind the agent's.

Agents cut a build's log at ``plan.log_limit`` themselves (conveyor.agent.executor),
so their bytes never get here. This guard is for agents that do not (older ones, a
misbehaving one): log bytes past ``limit + SLACK`` are acknowledged but not stored,
and the chunk that crosses that point is cut there, ending with the truncation line.
The slack leaves room for the agent's own truncation line, so a well-behaved agent
never triggers this. Re-sending a chunk gives the same cut (it depends only on the
chunk's offset and bytes), so the log's idempotent delivery is kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from conveyor.core.loglimit import truncation_line

#: Bytes allowed past the limit: the agent's own truncation line fits in it.
SLACK = 4096
#: Assignments whose limit is remembered (one store read per assignment otherwise).
CACHE_SIZE = 10_000

#: (controller id, assignment id) -> (limit, where it comes from); keyed by controller
#: too, as tests run several controllers in one process.
_limits: OrderedDict[tuple[str, str], tuple[int | None, str]] = OrderedDict()


async def _limit_of(runtime: Any, assignment_id: str, agent_id: int) -> tuple[int | None, str]:
    key = (str(getattr(runtime, "controller_id", "")), assignment_id)
    cached = _limits.get(key)
    if cached is not None:
        _limits.move_to_end(key)
        return cached
    build = await runtime.store.get_build_for_assignment(assignment_id, agent_id)
    plan = build.plan or {}
    limit = plan.get("log_limit")
    source = plan.get("log_limit_source") or "log limit"
    if limit is None:
        mb = getattr(runtime.settings, "log_limit_mb", None)
        limit, source = (mb * 1024 * 1024, "controller log_limit_mb") if mb else (None, "")
    _limits[key] = (limit, source)
    if len(_limits) > CACHE_SIZE:
        _limits.popitem(last=False)
    return limit, source


async def clip_chunk(
    runtime: Any, assignment_id: str, agent_id: int, offset: int, data: bytes
) -> bytes | None:
    """``data`` as it may be stored: whole, cut (ending with the truncation line), or
    None when all of it lies past the limit (acknowledge, store nothing)."""
    limit, source = await _limit_of(runtime, assignment_id, agent_id)
    if limit is None:
        return data
    hard = limit + SLACK
    if offset + len(data) <= hard:
        return data
    if offset >= hard:
        return None
    head = data[: hard - offset]
    return head + (b"" if head.endswith(b"\n") else b"\n") + truncation_line(limit, source)
