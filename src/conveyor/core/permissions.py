"""Who may do what: roles, token scopes and grants -> permissions. Pure policy (no I/O).

A user holds grants: a role either globally (pattern ``*``) or on a job-name
prefix / folder (``team-a/*``) or on one job (``team-a/service-x``). A token carries
a scope (read, trigger, admin). What a request may do is the permissions of the
grants that cover the job it names, intersected with the token's scope."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Permission(StrEnum):
    JOB_READ = "job.read"  # jobs, builds, logs, artifacts, queue, notifications
    JOB_WRITE = "job.write"  # create, change, delete jobs
    BUILD_TRIGGER = "build.trigger"
    BUILD_CANCEL = "build.cancel"
    BUILD_PIN = "build.pin"  # keep a build's artifacts
    AGENT_READ = "agent.read"
    AGENT_MANAGE = "agent.manage"  # drain, resume, enrollment tokens
    CLUSTER_READ = "cluster.read"
    USER_MANAGE = "user.manage"  # users, their tokens, grants
    AUDIT_READ = "audit.read"
    CREDENTIAL_READ = "credential.read"  # credential metadata (never values)
    CREDENTIAL_MANAGE = "credential.manage"  # create, replace, delete credentials
    CONFIG_MANAGE = "config.manage"  # config repository apply/export, forced edits
    MAINTENANCE = "maintenance.run"  # retention runs, backups


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    VIEWER = "viewer"


class Scope(StrEnum):
    READ = "read"
    TRIGGER = "trigger"
    ADMIN = "admin"


_VIEW = frozenset({Permission.JOB_READ, Permission.AGENT_READ, Permission.CLUSTER_READ})

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEW,
    Role.DEVELOPER: _VIEW
    | {
        Permission.CREDENTIAL_READ,
        Permission.JOB_WRITE,
        Permission.BUILD_TRIGGER,
        Permission.BUILD_CANCEL,
        Permission.BUILD_PIN,
    },
    # Operators run the fleet (agents, pools, backups, scaling); they read jobs.
    Role.OPERATOR: _VIEW
    | {Permission.AGENT_MANAGE, Permission.MAINTENANCE, Permission.CREDENTIAL_READ},
    Role.ADMIN: frozenset(Permission),
}

SCOPE_PERMISSIONS: dict[Scope, frozenset[Permission]] = {
    Scope.READ: frozenset(p for p in Permission if p.value.endswith(".read")),
    Scope.TRIGGER: frozenset(p for p in Permission if p.value.endswith(".read"))
    | {Permission.BUILD_TRIGGER, Permission.BUILD_CANCEL},
    Scope.ADMIN: frozenset(Permission),
}

#: Permissions that make sense on a job (prefix grants give only these).
JOB_PERMISSIONS = frozenset(
    {
        Permission.JOB_READ,
        Permission.JOB_WRITE,
        Permission.BUILD_TRIGGER,
        Permission.BUILD_CANCEL,
        Permission.BUILD_PIN,
    }
)

GLOBAL = "*"


@dataclass(frozen=True)
class Grant:
    role: Role
    pattern: str = GLOBAL  # "*", "team-a/*" or one job name


def valid_pattern(pattern: str) -> bool:
    """``*``, ``prefix*`` (usually a folder, ``team-a/*``) or an exact job name."""
    if not pattern or len(pattern) > 200 or any(c.isspace() for c in pattern):
        return False
    return "*" not in pattern[:-1]


def covers(pattern: str, job: str) -> bool:
    if pattern == GLOBAL:
        return True
    if pattern.endswith("*"):
        return job.startswith(pattern[:-1])
    return job == pattern


def permissions(grants: Iterable[Grant], scope: Scope, job: str | None = None) -> set[Permission]:
    """Effective permissions. With ``job``: the grants covering that job; without: global
    grants only (agents, users, audit...). Always intersected with the token scope."""
    held: set[Permission] = set()
    for grant in grants:
        role_perms = ROLE_PERMISSIONS[grant.role]
        if grant.pattern == GLOBAL:
            held |= role_perms
        elif job is not None and covers(grant.pattern, job):
            held |= role_perms & JOB_PERMISSIONS
    return held & SCOPE_PERMISSIONS[scope]


def anywhere(grants: Iterable[Grant], scope: Scope) -> set[Permission]:
    """Permissions held on at least one job or globally (for listings that are then
    filtered job by job)."""
    held: set[Permission] = set()
    for grant in grants:
        role_perms = ROLE_PERMISSIONS[grant.role]
        held |= role_perms if grant.pattern == GLOBAL else role_perms & JOB_PERMISSIONS
    return held & SCOPE_PERMISSIONS[scope]


def allowed(
    grants: Iterable[Grant], scope: Scope, permission: Permission, job: str | None = None
) -> bool:
    return permission in permissions(grants, scope, job)
