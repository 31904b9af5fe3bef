"""Credentials rows: id, kind, description and the AES-GCM encrypted value.

The table lives on the shared :data:`conveyor.store.schema.metadata` (migration
0007). The value column only ever holds ciphertext (see
:mod:`conveyor.credentials.keys`); the key id column says which key encrypted it.
Encryption happens in the callers' code before anything reaches this module,
except for :func:`reencrypt_all`, which re-encrypts every row in ONE transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, Table, Text, delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.errors import Conflict, NotFound
from conveyor.store.schema import metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

__all__ = [
    "CredentialRecord",
    "create_credential",
    "credentials",
    "delete_credential",
    "get_credential",
    "get_credentials",
    "list_credentials",
    "reencrypt_all",
    "replace_credential",
]

credentials = Table(
    "credentials",
    metadata,
    Column("id", String(200), primary_key=True),  # folder-scoped: team-a/deploy-key
    Column("kind", String(30), nullable=False),
    Column("description", Text, nullable=True),
    Column("secret", Text, nullable=False),  # base64(nonce + AES-GCM ciphertext + tag)
    Column("key_id", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("created_by", String(200), nullable=True),
)


@dataclass(frozen=True)
class CredentialRecord:
    id: str
    kind: str
    description: str | None
    secret: str  # ciphertext, never the value
    key_id: str
    created_at: datetime
    updated_at: datetime
    created_by: str | None

    def __repr__(self) -> str:
        return f"CredentialRecord(id={self.id!r}, kind={self.kind!r}, key_id={self.key_id!r})"


def _record(row: Row[Any]) -> CredentialRecord:
    m = row._mapping
    return CredentialRecord(
        id=m["id"],
        kind=m["kind"],
        description=m["description"],
        secret=m["secret"],
        key_id=m["key_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        created_by=m["created_by"],
    )


async def create_credential(
    store: Store,
    cred_id: str,
    kind: str,
    description: str | None,
    secret: str,
    key_id: str,
    created_by: str | None,
    now: datetime,
) -> CredentialRecord:
    try:
        async with store.write() as conn:
            await conn.execute(
                insert(credentials).values(
                    id=cred_id,
                    kind=kind,
                    description=description,
                    secret=secret,
                    key_id=key_id,
                    created_at=now,
                    updated_at=now,
                    created_by=created_by,
                )
            )
    except IntegrityError:
        raise Conflict(f"credential {cred_id!r} exists; replace its value with PUT") from None
    found = await get_credential(store, cred_id)
    assert found is not None
    return found


async def replace_credential(
    store: Store,
    cred_id: str,
    kind: str,
    description: str | None,
    secret: str,
    key_id: str,
    now: datetime,
) -> CredentialRecord:
    async with store.write() as conn:
        result = await conn.execute(
            update(credentials)
            .where(credentials.c.id == cred_id)
            .values(
                kind=kind, description=description, secret=secret, key_id=key_id, updated_at=now
            )
        )
        if result.rowcount != 1:
            raise NotFound(f"no credential {cred_id!r}")
    found = await get_credential(store, cred_id)
    assert found is not None
    return found


async def delete_credential(store: Store, cred_id: str) -> None:
    async with store.write() as conn:
        result = await conn.execute(delete(credentials).where(credentials.c.id == cred_id))
        if result.rowcount != 1:
            raise NotFound(f"no credential {cred_id!r}")


async def get_credential(store: Store, cred_id: str) -> CredentialRecord | None:
    async with store.read() as conn:
        row = (
            await conn.execute(select(credentials).where(credentials.c.id == cred_id))
        ).one_or_none()
    return None if row is None else _record(row)


async def get_credentials(store: Store, ids: Iterable[str]) -> dict[str, CredentialRecord]:
    """The credentials of these ids that exist, by id."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    async with store.read() as conn:
        rows = (await conn.execute(select(credentials).where(credentials.c.id.in_(wanted)))).all()
    return {r.id: r for r in map(_record, rows)}


async def list_credentials(store: Store, prefix: str | None = None) -> list[CredentialRecord]:
    """All credentials by id, or those in a folder (``prefix`` like ``team-a/``)."""
    query = select(credentials).order_by(credentials.c.id)
    if prefix:
        query = query.where(credentials.c.id.startswith(prefix, autoescape=True))
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [_record(r) for r in rows]


async def reencrypt_all(
    store: Store,
    transform: Callable[[CredentialRecord], str],
    new_key_id: str,
    also: Callable[[AsyncConnection], Awaitable[Any]] | None = None,
) -> int:
    """Replace every credential's ciphertext by ``transform(record)`` (decrypt with
    the old key, encrypt with the new one) in ONE write transaction: if any row
    fails, nothing changes. ``also`` runs in the same transaction (other values
    sealed with the key: pools' provider secrets). Returns the number of rows
    re-encrypted."""
    async with store.write() as conn:
        rows = [_record(r) for r in (await conn.execute(select(credentials))).all()]
        for record in rows:
            await conn.execute(
                update(credentials)
                .where(credentials.c.id == record.id)
                .values(secret=transform(record), key_id=new_key_id)
            )
        if also is not None:
            await also(conn)
    return len(rows)
