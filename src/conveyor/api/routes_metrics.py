"""GET /metrics and GET /prometheus: this controller's metrics in Prometheus's text format.

No token is required (scrapers rarely carry one): the output holds no secrets, and
deployments restrict these paths at the load balancer or network level
(docs/metrics.md). ``/prometheus`` is the same page, for teams coming from Jenkins.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from conveyor.api.deps import RuntimeDep
from conveyor.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
@router.get("/prometheus", response_class=Response, include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    # async on purpose: the exposition runs on the event loop, between the updater's
    # await points, so a scrape never sees half of a gauge update.
    runtime.metrics_updater.refresh_local()
    return Response(content=runtime.metrics.exposition(), media_type=CONTENT_TYPE)
