"""/healthz (the process is alive) and /readyz (store reachable, schema current)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from conveyor import __version__
from conveyor.api.deps import RuntimeDep
from conveyor.core.schema_compat import SchemaFit
from conveyor.store.migrate import current_revision, fit, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(runtime: RuntimeDep) -> dict[str, object]:
    return {
        "status": "ok",
        "version": __version__,
        "controller": runtime.controller_id,
        "leader": runtime.lease.is_leader,
    }


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    try:
        revision = await current_revision(runtime.store.read_engine)
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": f"store unreachable: {type(exc).__name__}"},
            status_code=503,
        )
    if runtime.settings.role == "standby" and not runtime.lease.is_leader:
        return JSONResponse({"status": "standby", "detail": "not the leader"}, status_code=503)
    head = head_revision()
    schema = fit(revision)
    if not schema.serves:
        return JSONResponse(
            {"status": "unavailable", "detail": f"schema at {revision}, expected {head}"},
            status_code=503,
        )
    body = {"status": "ready", "schema": revision}
    if schema is SchemaFit.NEWER:
        # A later release's expand migration, which this release runs with during a
        # rolling upgrade or after a rollback (docs/upgrading.md).
        body["fit"] = schema.value
    return JSONResponse(body)
