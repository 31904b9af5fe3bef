"""/api/v1/webhooks: SCM webhooks (no bearer token: verified by HMAC or token), their
recorded deliveries, and per-job webhook secrets. See docs/triggers.md."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.errors import problem
from conveyor.controller.webhooks import REJECTED, WebhookService
from conveyor.core.webhooks import PROVIDERS
from conveyor.errors import NotFound
from conveyor.store.scm import list_deliveries, set_webhook_secret

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

MAX_BODY = 5 * 1024 * 1024


class SecretIn(BaseModel):
    secret: Annotated[str, Field(min_length=8, max_length=500)]


def _service(runtime: Any) -> WebhookService:
    assert runtime.scm is not None
    return WebhookService(
        runtime.store,
        runtime.builds,
        runtime.scm,
        runtime.clock,
        runtime.settings.webhook_secret,
        runtime.settings.config_repo,
    )


@router.get("/deliveries")
async def deliveries(
    runtime: RuntimeDep,
    _: CallerDep,
    outcome: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Recorded deliveries, newest first: outcome accepted (builds), ignored or rejected
    (reason). Never holds a secret or a signature."""
    return await list_deliveries(runtime.store, limit, outcome)


@router.put("/secrets/{job:path}", status_code=204)
async def put_secret(job: str, body: SecretIn, runtime: RuntimeDep, _: CallerDep) -> Response:
    """Give a job a webhook secret of its own (then only deliveries signed with it build it)."""
    await set_webhook_secret(runtime.store, job, body.secret)
    return Response(status_code=204)


@router.delete("/secrets/{job:path}", status_code=204)
async def delete_secret(job: str, runtime: RuntimeDep, _: CallerDep) -> Response:
    await set_webhook_secret(runtime.store, job, None)
    return Response(status_code=204)


@router.post("/{provider}")
async def receive(provider: str, request: Request, runtime: RuntimeDep) -> JSONResponse:
    """A webhook from GitHub, GitLab, Gitea or anything (generic). 202 when it started
    builds, 200 when ignored (the reason says why), 401 when no secret verifies it."""
    if provider not in PROVIDERS:
        raise NotFound(f"unknown webhook provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    body = await request.body()
    if len(body) > MAX_BODY:
        return problem(413, "Payload Too Large", f"webhook bodies are limited to {MAX_BODY} bytes")
    headers = {k.lower(): v for k, v in request.headers.items()}
    result = await _service(runtime).handle(provider, headers, body)
    if result.outcome != REJECTED and result.config_repo_changed and runtime.config_sync:
        await runtime.config_sync.run_once(force=True)
    if result.outcome == REJECTED:
        return problem(
            401, "Unauthorized", f"webhook rejected: {result.reason}", delivery=result.id
        )
    return JSONResponse(
        {
            "delivery": result.id,
            "outcome": result.outcome,
            "reason": result.reason,
            "builds": result.builds,
        },
        status_code=202 if result.builds else 200,
    )
