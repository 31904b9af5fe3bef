"""The credentials vault: encrypts on the way in, decrypts only to hand a build's
bound values to the agent that runs it. Nothing here returns a value to the API.

The key comes from settings (:func:`load_secret_key`); without one, creating or
resolving credentials is refused with a clear 409, and everything else works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from conveyor.core.plan import BuildPlan, CredentialBind
from conveyor.credentials.keys import (
    DEFAULT_KEY_FILE,
    DecryptError,
    SecretKey,
    key_from_text,
    load_key_file,
)
from conveyor.credentials.values import check_credential_id, decode_value, encode_value
from conveyor.errors import ConveyorError, InvalidInput, NotFound
from conveyor.settings import Settings
from conveyor.store import Store
from conveyor.store.credentials import (
    CredentialRecord,
    create_credential,
    get_credential,
    get_credentials,
    replace_credential,
)

log = structlog.get_logger(__name__)

__all__ = [
    "CredentialVault",
    "CredentialsNotConfigured",
    "check_bindings",
    "context_of",
    "load_secret_key",
]


class CredentialsNotConfigured(ConveyorError):
    status = 409
    title = "Credentials store not configured"


NO_KEY = (
    "no credentials key is configured on this controller: set CONVEYOR_SECRET_KEY, pass "
    "--secret-key-file, or put a key in HOME/secret.key (docs/credentials.md)"
)


def load_secret_key(settings: Settings) -> SecretKey | None:
    """The key from ``secret_key``, else ``secret_key_file``, else HOME/secret.key if it
    exists, else None. A bad key is a ``ValueError`` whose message never shows it."""
    if settings.secret_key is not None:
        return SecretKey(
            key_from_text(settings.secret_key.get_secret_value(), "CONVEYOR_SECRET_KEY")
        )
    if settings.secret_key_file is not None:
        return SecretKey(load_key_file(settings.secret_key_file))
    default = settings.home / DEFAULT_KEY_FILE
    if default.exists():
        return SecretKey(load_key_file(default))
    return None


def context_of(cred_id: str, kind: str) -> bytes:
    """What each ciphertext is bound to: a row copied onto another id does not decrypt."""
    return f"conveyor-credential\0{cred_id}\0{kind}".encode()


def _describe(reason: str, cred_id: str) -> str:
    return f"credential {cred_id!r} {reason}"


@dataclass
class CredentialVault:
    store: Store
    key: SecretKey | None

    def _key(self) -> SecretKey:
        if self.key is None:
            raise CredentialsNotConfigured(NO_KEY)
        return self.key

    def seal(self, cred_id: str, kind: str, fields: dict[str, str]) -> str:
        return self._key().encrypt(encode_value(fields), context_of(cred_id, kind))

    def open(self, record: CredentialRecord) -> dict[str, str]:
        key = self._key()
        if record.key_id != key.key_id:
            raise DecryptError(
                f"is encrypted with key {record.key_id}; this controller has key {key.key_id}"
                " (restart it with the rotated key)"
            )
        try:
            plaintext = key.decrypt(record.secret, context_of(record.id, record.kind))
        except DecryptError:
            raise DecryptError("does not decrypt with this controller's key") from None
        return decode_value(plaintext)

    async def create(
        self,
        cred_id: str,
        kind: str,
        description: str | None,
        fields: dict[str, str],
        by: str | None,
        now: datetime,
    ) -> CredentialRecord:
        check_credential_id(cred_id)
        key = self._key()
        return await create_credential(
            self.store,
            cred_id,
            kind,
            description,
            self.seal(cred_id, kind, fields),
            key.key_id,
            by,
            now,
        )

    async def replace(
        self,
        cred_id: str,
        kind: str,
        description: str | None,
        fields: dict[str, str],
        now: datetime,
    ) -> CredentialRecord:
        key = self._key()
        if await get_credential(self.store, cred_id) is None:
            raise NotFound(f"no credential {cred_id!r}")
        return await replace_credential(
            self.store,
            cred_id,
            kind,
            description,
            self.seal(cred_id, kind, fields),
            key.key_id,
            now,
        )

    async def resolve(self, plan: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The values a build's plan binds (and its repository's credential), by id, for
        the agent that starts it. An id
        that is gone or does not decrypt maps to ``{"error": why}``: the agent fails
        the steps that bind it, saying why (never with a value)."""
        parsed = BuildPlan.model_validate(plan)
        ids = parsed.credential_ids()
        if parsed.checkout is not None and parsed.checkout.credential:
            # The repository's credential, for the agent's checkout (conveyor.git).
            ids = sorted({*ids, parsed.checkout.credential})
        if not ids:
            return {}
        found = await get_credentials(self.store, ids)
        resolved: dict[str, dict[str, str]] = {}
        for cred_id in ids:
            record = found.get(cred_id)
            if record is None:
                resolved[cred_id] = {"error": _describe("does not exist (deleted?)", cred_id)}
                continue
            try:
                resolved[cred_id] = {"kind": record.kind, **self.open(record)}
            except CredentialsNotConfigured:
                resolved[cred_id] = {"error": _describe("cannot be decrypted: " + NO_KEY, cred_id)}
            except (DecryptError, ValueError) as exc:
                log.warning("credentials.decrypt_failed", credential=cred_id, error=str(exc))
                resolved[cred_id] = {"error": _describe(str(exc), cred_id)}
        return resolved


_SHAPE_FOR_KIND = {
    "text": ("env", "file"),
    "file": ("env", "file"),
    "ssh_key": ("env", "file"),
    "username_password": ("username_env/password_env",),
}


def _shape(bind: CredentialBind) -> str:
    if bind.env is not None:
        return "env"
    if bind.file is not None:
        return "file"
    return "username_env/password_env"


async def check_bindings(store: Store, binds: Iterable[CredentialBind]) -> None:
    """At trigger time: every bound id exists and is bound in a way its kind allows;
    else an :class:`InvalidInput` (400) naming the ids."""
    binds = list(binds)
    found = await get_credentials(store, (b.id for b in binds))
    errors: list[str] = []
    for bind in binds:
        record = found.get(bind.id)
        if record is None:
            message = f"unknown credential {bind.id!r}"
        elif _shape(bind) not in _SHAPE_FOR_KIND.get(record.kind, ()):
            allowed = " or ".join(_SHAPE_FOR_KIND.get(record.kind, ()))
            message = (
                f"credential {bind.id!r} is a {record.kind} credential: bind it with {allowed},"
                f" not {_shape(bind)}"
            )
        else:
            continue
        if message not in errors:
            errors.append(message)
    if errors:
        raise InvalidInput("; ".join(errors), errors=errors)
