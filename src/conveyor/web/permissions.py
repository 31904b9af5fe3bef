"""The one place the web UI asks whether the caller may take an action.

Templates call ``can(caller, "cancel", job)`` before rendering a button or a form,
so actions a user may not take are not offered. Today the decision comes from the
API token's scope; the API itself still enforces its own rules on every request.
"""

from __future__ import annotations

from typing import Protocol

#: Every action the UI may offer.
ACTIONS = frozenset({"trigger", "cancel", "rerun", "drain", "resume"})

#: Actions on builds of a job (the ``job`` argument matters for these).
BUILD_ACTIONS = frozenset({"trigger", "cancel", "rerun"})

#: Token scope -> actions it allows. Unknown scopes allow nothing.
SCOPE_ACTIONS: dict[str, frozenset[str]] = {
    "read": frozenset(),
    "write": BUILD_ACTIONS,
    "admin": ACTIONS,
}


class HasScope(Protocol):
    @property
    def scope(self) -> str: ...


def can(caller: HasScope | None, action: str, job: str | None = None) -> bool:
    """Whether ``caller`` may take ``action`` (on a build of ``job`` when given)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown UI action {action!r}; known: {sorted(ACTIONS)}")
    if caller is None:
        return False
    # ``job`` is unused while permissions are per token; per-job roles will use it.
    del job
    return action in SCOPE_ACTIONS.get(caller.scope, frozenset())
