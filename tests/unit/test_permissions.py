"""Pure policy: roles, scopes, grants on folders / prefixes, and login lockout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conveyor.core.lockout import LoginState, after_failure, after_success, is_locked
from conveyor.core.permissions import (
    Grant,
    Permission,
    Role,
    Scope,
    allowed,
    anywhere,
    covers,
    permissions,
    valid_pattern,
)

P = Permission


def test_patterns() -> None:
    assert covers("*", "anything") and covers("team-a/*", "team-a/svc")
    assert not covers("team-a/*", "team-ab/svc") and covers("team-a*", "team-ab/svc")
    assert covers("team-a/svc", "team-a/svc") and not covers("team-a/svc", "team-a/svc2")
    assert valid_pattern("*") and valid_pattern("team-a/*") and valid_pattern("job")
    assert not valid_pattern("a*b") and not valid_pattern("") and not valid_pattern("a b")


def test_roles_scopes_and_prefix_grants() -> None:
    dev_a = [Grant(Role.DEVELOPER, "team-a/*")]
    assert allowed(dev_a, Scope.ADMIN, P.BUILD_TRIGGER, "team-a/x")
    assert not allowed(dev_a, Scope.ADMIN, P.BUILD_TRIGGER, "team-b/x")
    assert not allowed(dev_a, Scope.ADMIN, P.AGENT_READ)  # prefix grants: job perms only
    assert P.BUILD_TRIGGER in anywhere(dev_a, Scope.ADMIN)
    # Effective = role ∩ scope.
    assert not allowed(dev_a, Scope.READ, P.BUILD_TRIGGER, "team-a/x")
    assert allowed(dev_a, Scope.TRIGGER, P.BUILD_CANCEL, "team-a/x")
    admin = [Grant(Role.ADMIN)]
    assert permissions(admin, Scope.ADMIN) == set(Permission)
    assert permissions(admin, Scope.READ) == {p for p in Permission if p.value.endswith(".read")}
    operator = [Grant(Role.OPERATOR)]
    assert allowed(operator, Scope.ADMIN, P.AGENT_MANAGE)
    assert not allowed(operator, Scope.ADMIN, P.BUILD_TRIGGER, "x")
    viewer = [Grant(Role.VIEWER)]
    assert permissions(viewer, Scope.ADMIN, "x") == {P.JOB_READ, P.AGENT_READ, P.CLUSTER_READ}
    assert permissions([], Scope.ADMIN, "x") == set()


def test_lockout_after_n_failures_then_it_ends() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    state = LoginState(0, None)
    for _ in range(4):
        state = after_failure(state, now, 5, 60)
        assert not is_locked(state, now)
    state = after_failure(state, now, 5, 60)
    assert is_locked(state, now) and state.failures == 0
    assert is_locked(state, now + timedelta(seconds=59))
    assert not is_locked(state, now + timedelta(seconds=61))
    assert after_success() == LoginState(0, None)
