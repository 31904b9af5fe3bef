"""Users, sessions, API and agent tokens, permissions, audit and HTTP hardening.

Public entry points for other modules: :func:`conveyor.security.audit.record_audit`,
:func:`conveyor.security.agents.issue_enrollment_token`, the route gate
:func:`conveyor.security.policy.authorize` and :func:`conveyor.security.install`."""

from __future__ import annotations

from conveyor.security.install import install

__all__ = ["install"]
