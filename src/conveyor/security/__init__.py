"""Users, sessions, API and agent tokens, permissions, audit and HTTP hardening.

Entry points for other modules: :func:`conveyor.security.audit.record_audit`,
:func:`conveyor.security.agents.issue_enrollment_token`, the route gate
:func:`conveyor.security.policy.authorize` and :func:`conveyor.security.install.install`.
(Nothing is imported here: conveyor.api.deps imports conveyor.security.auth.)"""
