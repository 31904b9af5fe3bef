"""Notification deliveries: one row per (build, notifier, event), with its outcome.

The table lives on the shared :data:`conveyor.store.schema.metadata` (migration 0004).
A delivery is claimed by inserting its row first: the unique key on
``(build_id, notifier, event)`` lets exactly one controller win the insert, and only
the winner sends. Rows never hold secrets: no URL, no signature, no credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.engine import Row

from conveyor.core.states import StepState
from conveyor.store.schema import Id, build_steps, metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

__all__ = [
    "DELIVERED",
    "FAILED",
    "SENDING",
    "DeliveryRecord",
    "claim_delivery",
    "finish_delivery",
    "get_delivery",
    "list_deliveries",
    "notification_deliveries",
    "record_attempt",
    "set_build_step",
]

#: Delivery states: being sent (attempts go on), and the two outcomes.
SENDING = "sending"
DELIVERED = "delivered"
FAILED = "failed"

MAX_ERROR_LENGTH = 2000

notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("notifier", String(200), nullable=False),
    Column("event", String(20), nullable=False),
    Column("kind", String(20), nullable=False),  # webhook | slack | email | unknown
    Column("delivery_id", String(64), nullable=False),  # X-Conveyor-Delivery, kept over retries
    Column("reason", Text, nullable=True),  # which rule / pipeline entry selected it
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    UniqueConstraint(
        "build_id", "notifier", "event", name="uq_notification_deliveries_build_notifier_event"
    ),
)


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    build_id: int
    notifier: str
    event: str
    kind: str
    delivery_id: str
    reason: str | None
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _delivery(row: Row[Any]) -> DeliveryRecord:
    m = row._mapping
    return DeliveryRecord(
        id=m["id"],
        build_id=m["build_id"],
        notifier=m["notifier"],
        event=m["event"],
        kind=m["kind"],
        delivery_id=m["delivery_id"],
        reason=m["reason"],
        state=m["state"],
        attempts=m["attempts"],
        last_error=m["last_error"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
    )


def _clip(error: str | None) -> str | None:
    return None if error is None else error[:MAX_ERROR_LENGTH]


async def claim_delivery(
    store: Store,
    build_id: int,
    notifier: str,
    event: str,
    kind: str,
    delivery_id: str,
    reason: str | None,
    now: datetime,
) -> DeliveryRecord | None:
    """Insert the delivery's row (state ``sending``, no attempts yet). Returns it, or
    ``None`` when a row for ``(build_id, notifier, event)`` exists already: someone
    else (another controller, an earlier call) owns this delivery."""
    async with store.write() as conn:
        result = await conn.execute(
            store.insert_ignore(notification_deliveries).values(
                build_id=build_id,
                notifier=notifier,
                event=event,
                kind=kind,
                delivery_id=delivery_id,
                reason=reason,
                state=SENDING,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return None
        row = (
            await conn.execute(
                select(notification_deliveries).where(
                    notification_deliveries.c.build_id == build_id,
                    notification_deliveries.c.notifier == notifier,
                    notification_deliveries.c.event == event,
                )
            )
        ).one()
    return _delivery(row)


async def record_attempt(
    store: Store, delivery_id: int, attempts: int, error: str | None, now: datetime
) -> None:
    """Progress of a delivery still being tried: attempts so far and the last error."""
    async with store.write() as conn:
        await conn.execute(
            update(notification_deliveries)
            .where(notification_deliveries.c.id == delivery_id)
            .values(attempts=attempts, last_error=_clip(error), updated_at=now)
        )


async def finish_delivery(
    store: Store, delivery_id: int, state: str, attempts: int, error: str | None, now: datetime
) -> DeliveryRecord:
    """The outcome: ``delivered`` or ``failed``, with the attempts made and the last error."""
    if state not in (DELIVERED, FAILED):
        raise ValueError(f"a delivery ends delivered or failed, not {state!r}")
    async with store.write() as conn:
        await conn.execute(
            update(notification_deliveries)
            .where(notification_deliveries.c.id == delivery_id)
            .values(
                state=state,
                attempts=attempts,
                last_error=_clip(error),
                updated_at=now,
                finished_at=now,
            )
        )
        row = (
            await conn.execute(
                select(notification_deliveries).where(notification_deliveries.c.id == delivery_id)
            )
        ).one()
    return _delivery(row)


async def get_delivery(store: Store, delivery_id: int) -> DeliveryRecord | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(notification_deliveries).where(notification_deliveries.c.id == delivery_id)
            )
        ).one_or_none()
    return None if row is None else _delivery(row)


async def list_deliveries(store: Store, build_id: int, limit: int = 200) -> list[DeliveryRecord]:
    """A build's deliveries, most recent first."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(notification_deliveries)
                .where(notification_deliveries.c.build_id == build_id)
                .order_by(notification_deliveries.c.id.desc())
                .limit(limit)
            )
        ).all()
    return [_delivery(r) for r in rows]


async def set_build_step(
    store: Store,
    build_id: int,
    key: str,
    state: StepState,
    now: datetime,
    exit_code: int | None = None,
) -> None:
    """Set the state of one of a build's steps by ``(build_id, key)``: for the steps the
    controller runs itself (``notify`` post steps), which have no assignment. ``running``
    sets ``started_at`` (attempt 1); any other state sets ``finished_at`` and
    ``exit_code``. It overwrites whatever state the row had (a finished build's
    pending steps are already ``skipped``)."""
    values: dict[str, Any] = {"state": state.value}
    if state == StepState.RUNNING:
        values.update(attempt=1, started_at=now, finished_at=None, exit_code=None)
    else:
        values.update(exit_code=exit_code, finished_at=now)
    async with store.write() as conn:
        await conn.execute(
            update(build_steps)
            .where(build_steps.c.build_id == build_id, build_steps.c.key == key)
            .values(**values)
        )
