"""Login throttling: after ``max_failures`` wrong passwords in a row an account is
locked for ``lockout_seconds``. Pure policy; the store keeps the counters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LoginState:
    failures: int
    locked_until: datetime | None


def is_locked(state: LoginState, now: datetime) -> bool:
    return state.locked_until is not None and state.locked_until > now


def after_failure(
    state: LoginState, now: datetime, max_failures: int, lockout_seconds: float
) -> LoginState:
    """The counters after one more failure; the lockout starts at the N-th failure and
    the count starts over, so the next lockout needs N new failures."""
    failures = state.failures + 1
    if failures >= max_failures:
        return LoginState(0, now + timedelta(seconds=lockout_seconds))
    return LoginState(failures, None)


def after_success() -> LoginState:
    return LoginState(0, None)
