"""Key rotation: re-encrypt every credential, and every provider secret sealed in a
pool's provider config, with a new key in ONE transaction.

Run by ``conveyor admin rotate-key`` straight against the database (like a
migration). A row already sealed with the new key (a rotation run again) is
re-sealed with it; a row that neither key opens stops the rotation and the
transaction rolls back: nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.credentials.keys import DecryptError, SecretKey
from conveyor.credentials.service import context_of
from conveyor.providers.secrets import ProviderSecretError, reseal_config
from conveyor.store import Store, open_store
from conveyor.store.credentials import CredentialRecord, list_credentials, reencrypt_all
from conveyor.store.migrate import upgrade
from conveyor.store.pools import rewrite_provider_configs

__all__ = ["RotationError", "rotate", "rotate_store"]


class RotationError(Exception):
    pass


async def rotate_store(
    store: Store, old: SecretKey, new: SecretKey, progress: Progress | None = None
) -> int:
    task = None
    if progress is not None:
        total = len(await list_credentials(store))
        task = progress.add_task("re-encrypting", total=total)

    def transform(record: CredentialRecord) -> str:
        context = context_of(record.id, record.kind)
        key = {old.key_id: old, new.key_id: new}.get(record.key_id)
        if key is None:
            raise RotationError(
                f"credential {record.id!r} is sealed with key {record.key_id}, which is "
                f"neither the current key ({old.key_id}) nor the new one"
            )
        try:
            plaintext = key.decrypt(record.secret, context)
        except DecryptError:
            raise RotationError(f"credential {record.id!r} does not decrypt") from None
        if progress is not None and task is not None:
            progress.advance(task)
        return new.encrypt(plaintext, context)

    def reseal(pool: str, config: dict[str, Any]) -> dict[str, Any]:
        try:
            return reseal_config(pool, config, {old.key_id: old, new.key_id: new}, new)
        except ProviderSecretError as exc:
            raise RotationError(str(exc)) from None

    async def reseal_pools(conn: AsyncConnection) -> None:
        # Pools' provider secrets are sealed with the same key (providers/secrets.py).
        await rewrite_provider_configs(conn, reseal)

    return await reencrypt_all(store, transform, new.key_id, also=reseal_pools)


def rotate(database_url: str, old: SecretKey, new: SecretKey) -> int:
    async def main() -> int:
        store = open_store(database_url)
        try:
            await upgrade(store.write_engine)
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
            ) as progress:
                return await rotate_store(store, old, new, progress)
        finally:
            await store.close()

    return asyncio.run(main())
