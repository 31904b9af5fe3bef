"""The one place the web UI asks whether the caller may take an action.

Templates call ``can(caller, "cancel", job)`` before rendering a button or a form,
so actions a user may not take are not offered. Today the decision comes from the
API token's scope; the API itself still enforces its own rules on every request.
"""

from __future__ import annotations

from typing import Protocol

from conveyor.core.permissions import Permission

#: Every action the UI may offer, and the permission it needs.
ACTION_PERMISSIONS: dict[str, Permission] = {
    "trigger": Permission.BUILD_TRIGGER,
    "rerun": Permission.BUILD_TRIGGER,
    "cancel": Permission.BUILD_CANCEL,
    "configure": Permission.JOB_WRITE,  # enable / disable the job
    "delete": Permission.JOB_WRITE,  # delete a finished build
    "drain": Permission.AGENT_MANAGE,
    "resume": Permission.AGENT_MANAGE,
}
ACTIONS = frozenset(ACTION_PERMISSIONS)


class MayAct(Protocol):
    def can(self, permission: Permission, job: str | None = None) -> bool: ...


def can(caller: MayAct | None, action: str, job: str | None = None) -> bool:
    """Whether ``caller`` may take ``action`` (on a build of ``job`` when given): the
    same decision as the API's route gate (conveyor.security.policy), so a button is
    shown exactly when the request behind it would be allowed."""
    if action not in ACTION_PERMISSIONS:
        raise ValueError(f"unknown UI action {action!r}; known: {sorted(ACTIONS)}")
    if caller is None:
        return False
    return caller.can(ACTION_PERMISSIONS[action], job)
