"""/api/v1 notification deliveries of a build (never any secret: no URLs, no signatures)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.store.notifications import DeliveryRecord, list_deliveries

router = APIRouter(prefix="/api/v1", tags=["notifications"])


class DeliveryOut(BaseModel):
    id: int
    build_id: int
    notifier: str
    kind: str
    event: str
    reason: str | None
    delivery_id: str
    state: str  # sending | delivered | failed
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, d: DeliveryRecord) -> DeliveryOut:
        return cls(
            id=d.id,
            build_id=d.build_id,
            notifier=d.notifier,
            kind=d.kind,
            event=d.event,
            reason=d.reason,
            delivery_id=d.delivery_id,
            state=d.state,
            attempts=d.attempts,
            last_error=d.last_error,
            created_at=d.created_at,
            updated_at=d.updated_at,
            finished_at=d.finished_at,
        )


@router.get("/builds/{build_id}/notifications")
async def build_notifications(
    build_id: int, runtime: RuntimeDep, _: CallerDep
) -> list[DeliveryOut]:
    """The build's notification deliveries, most recent first."""
    await runtime.store.get_build(build_id)  # 404 for an unknown build
    return [DeliveryOut.of(d) for d in await list_deliveries(runtime.store, build_id)]
