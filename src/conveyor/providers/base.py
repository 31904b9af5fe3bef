"""What every provider does, and the one place agents get their credentials."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from conveyor.store import Store

#: How long an agent token issued for a provider-started agent stays valid.
AGENT_TOKEN_DAYS = 7


@dataclass(frozen=True)
class AgentLaunch:
    """Everything needed to start one agent of a pool."""

    pool: str
    agent_name: str
    url: str
    token: str
    labels: list[str]
    executors: int
    ephemeral: bool
    env: dict[str, str] = field(default_factory=dict)

    def agent_args(self) -> list[str]:
        """`conveyor agent` arguments (the token travels in CONVEYOR_TOKEN, never argv)."""
        args = [
            "agent",
            "--url",
            self.url,
            "--name",
            self.agent_name,
            "--labels",
            ",".join(self.labels),
            "--executors",
            str(self.executors),
            "--pool",
            self.pool,
        ]
        return [*args, "--ephemeral"] if self.ephemeral else args


class Provider(ABC):
    """Starts and stops a pool's agents. Instances are opaque strings (a PID, a
    container id, a pod name) that the autoscaler stores in ``pool_instances``.

    Providers never decide anything: the autoscaler drains an agent and waits until it
    is idle before it calls :meth:`delete`, so no build is interrupted."""

    kind: str = "?"

    @abstractmethod
    async def create(self, launch: AgentLaunch) -> str:
        """Start one agent; return its instance id."""

    @abstractmethod
    async def delete(self, pool: str, instance: str) -> None:
        """Stop an instance (idle or drained already). Stopping a gone one is no error."""

    @abstractmethod
    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        """The pool's instances that still exist (an exited ephemeral agent does not).
        ``known``: instance -> agent name, as recorded by the autoscaler."""

    async def close(self) -> None:
        return None


async def acquire_agent_token(
    store: Store, pool: str, agent_name: str, now: datetime
) -> tuple[str, int]:
    """The credential a provider-started agent registers with: (token, token id).

    The only place agent credentials are made: a one-time enrollment token
    (conveyor.security.agents) bound to this agent's name and pool, valid
    AGENT_TOKEN_DAYS; the autoscaler revokes it when it stops the agent."""
    from conveyor.security.agents import issue_enrollment_token
    from conveyor.security.auth import digest
    from conveyor.store.security import find_agent_token

    token = await issue_enrollment_token(
        store,
        pool=pool,
        agent_name=agent_name,
        one_time=True,
        expires_at=now + timedelta(days=AGENT_TOKEN_DAYS),
        created_by=f"autoscaler (pool {pool})",
        now=now,
    )
    record = await find_agent_token(store, digest(token))
    assert record is not None
    return token, record.id


async def revoke_agent_token(store: Store, token_id: int, now: datetime) -> None:
    from conveyor.errors import NotFound
    from conveyor.store import security as db

    try:
        await db.revoke_agent_token(store, token_id, now)
    except NotFound:  # already gone: nothing to revoke
        pass
