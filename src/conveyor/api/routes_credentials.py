"""/api/v1/credentials: create, list, show, replace, delete. Values go in, never out:
every answer carries metadata only (id, kind, description, times, key id)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from conveyor.api.deps import Caller, CallerDep, RuntimeDep
from conveyor.credentials.service import NO_KEY, CredentialsNotConfigured, CredentialVault
from conveyor.credentials.values import MAX_VALUE_BYTES, check_credential_id, check_value
from conveyor.errors import InvalidInput, NotFound
from conveyor.runtime import Runtime
from conveyor.security.audit import record_audit
from conveyor.store.credentials import (
    CredentialRecord,
    delete_credential,
    get_credential,
    list_credentials,
)

router = APIRouter(prefix="/api/v1/credentials", tags=["credentials"])
log = structlog.get_logger(__name__)

Kind = Literal["text", "username_password", "file", "ssh_key"]
_Secret = Annotated[str | None, Field(default=None, max_length=MAX_VALUE_BYTES)]


class CredentialValueIn(BaseModel):
    kind: Kind | None = Field(default=None, description="unchanged when left out (PUT)")
    description: str | None = Field(default=None, max_length=2000)
    value: _Secret = Field(default=None, description="text, file and ssh_key credentials")
    username: _Secret = Field(default=None, description="username_password credentials")
    password: _Secret = Field(default=None, description="username_password credentials")


class CredentialIn(CredentialValueIn):
    id: str = Field(
        min_length=1,
        max_length=200,
        description="folder-scoped like job names: team-a/deploy-key",
    )
    kind: Kind = "text"


class CredentialOut(BaseModel):
    id: str
    kind: str
    description: str | None
    key_id: str = Field(description="which encryption key the stored value is sealed with")
    created_at: datetime
    updated_at: datetime
    created_by: str | None

    @classmethod
    def of(cls, c: CredentialRecord) -> CredentialOut:
        return cls(
            id=c.id,
            kind=c.kind,
            description=c.description,
            key_id=c.key_id,
            created_at=c.created_at,
            updated_at=c.updated_at,
            created_by=c.created_by,
        )


def _no_nul(value: str | None, what: str) -> None:
    # PostgreSQL text cannot hold NUL: refuse it here, as a 400, not a driver error.
    if value is not None and "\0" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")


def _vault(runtime: Runtime) -> CredentialVault:
    if runtime.credentials is None:
        raise CredentialsNotConfigured(NO_KEY)
    return runtime.credentials


async def _audit(runtime: Runtime, caller: Caller, action: str, target: str) -> None:
    """A credential change in the audit log, flagged as a security event (the value is
    never part of it)."""
    await record_audit(
        runtime.store,
        actor=caller.name,
        action=action,
        target=f"credential:{target}",
        outcome="success",
        source="api",
        security=True,
    )


@router.post("", status_code=201)
async def create(
    body: CredentialIn, runtime: RuntimeDep, caller: CallerDep, response: Response
) -> CredentialOut:
    """Create a credential. Its value is encrypted at once and never shown again."""
    check_credential_id(body.id)
    _no_nul(body.description, "description")
    fields = check_value(body.kind, body.value, body.username, body.password)
    record = await _vault(runtime).create(
        body.id, body.kind, body.description, fields, caller.name, runtime.clock()
    )
    await _audit(runtime, caller, "credential.create", body.id)
    response.headers["Location"] = f"/api/v1/credentials/{body.id}"
    return CredentialOut.of(record)


@router.get("")
async def list_all(
    runtime: RuntimeDep,
    _: CallerDep,
    prefix: Annotated[str | None, Query(max_length=200)] = None,
) -> list[CredentialOut]:
    """Credentials (metadata only), optionally those in one folder (``prefix=team-a/``)."""
    _no_nul(prefix, "prefix")
    return [CredentialOut.of(c) for c in await list_credentials(runtime.store, prefix)]


@router.get("/{cred_id:path}")
async def show(cred_id: str, runtime: RuntimeDep, _: CallerDep) -> CredentialOut:
    _no_nul(cred_id, "credential id")
    record = await get_credential(runtime.store, cred_id)
    if record is None:
        raise NotFound(f"no credential {cred_id!r}")
    return CredentialOut.of(record)


@router.put("/{cred_id:path}")
async def replace(
    cred_id: str, body: CredentialValueIn, runtime: RuntimeDep, caller: CallerDep
) -> CredentialOut:
    """Replace a credential's value (and kind or description when given)."""
    _no_nul(cred_id, "credential id")
    _no_nul(body.description, "description")
    current = await get_credential(runtime.store, cred_id)
    if current is None:
        raise NotFound(f"no credential {cred_id!r}")
    kind = body.kind or current.kind
    fields = check_value(kind, body.value, body.username, body.password)
    description = body.description if body.description is not None else current.description
    record = await _vault(runtime).replace(cred_id, kind, description, fields, runtime.clock())
    await _audit(runtime, caller, "credential.replace", cred_id)
    return CredentialOut.of(record)


@router.delete("/{cred_id:path}", status_code=204)
async def remove(cred_id: str, runtime: RuntimeDep, caller: CallerDep) -> Response:
    _no_nul(cred_id, "credential id")
    await delete_credential(runtime.store, cred_id)
    await _audit(runtime, caller, "credential.delete", cred_id)
    return Response(status_code=204)
