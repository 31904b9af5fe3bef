"""Secrets in a pool's ``provider_config``: never stored in clear.

Two ways to give a provider a secret (a Kubernetes bearer token, a key, a password in
a command provider's ``env`` or ``config``):

* **a reference to the credentials store** (preferred): ``token_credential: k8s-token``
  (any ``NAME_credential`` field becomes ``NAME``), or ``{credential: ID}`` as a value
  (e.g. ``env: {API_TOKEN: {credential: ci/api-token}}``). Only the id is stored; the
  value is read through the :class:`~conveyor.credentials.service.CredentialVault`
  when the autoscaler builds the provider;
* **inline**: a string whose field name looks secret (``token``, ``password``,
  ``secret``, ``key``, ``credential``, ``auth``, ``pass`` in any case, at any depth
  except inside ``pod_template``) is encrypted with the credentials key before it is
  stored (AES-GCM, bound to the pool and the field's path) as ``{"$sealed": …,
  "key_id": …}``. Without a credentials key an inline secret is refused (409).

The API shows both as ``***`` (routes_pools._redacted); a PATCH that sends ``***``
back for a field keeps the stored value. ``pod_template`` is a Kubernetes manifest:
secrets belong in Kubernetes Secrets there (``valueFrom.secretKeyRef``), and it is
stored as given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.core.provider_secrets import (
    REDACTED,
    REF_SUFFIX,
    SEALED,
    VERBATIM,
    looks_secret,
    redacted,
)
from conveyor.core.provider_secrets import is_reference as _is_reference
from conveyor.core.provider_secrets import is_sealed as _is_sealed
from conveyor.core.provider_secrets import previous as _previous
from conveyor.core.provider_secrets import walk as _walk
from conveyor.credentials.keys import DecryptError, SecretKey
from conveyor.credentials.service import NO_KEY, CredentialsNotConfigured, CredentialVault
from conveyor.errors import InvalidInput
from conveyor.store.credentials import get_credentials

__all__ = [
    "REDACTED",
    "SEALED",
    "ProviderSecretError",
    "looks_secret",
    "placeholders",
    "redacted",
    "resolve_config",
    "seal_config",
]


class ProviderSecretError(InvalidInput):
    """A provider config whose secrets cannot be resolved (unknown credential...)."""


def _context(pool: str, path: str) -> bytes:
    return f"conveyor-pool-secret\0{pool}\0{path}".encode()


def seal_config(
    vault: CredentialVault | None,
    pool: str,
    config: dict[str, Any],
    stored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What to store for ``config``: inline secrets sealed with the credentials key.
    ``stored`` is the pool's current (sealed) config: a ``***`` sent back keeps the
    value stored at the same path. CredentialsNotConfigured (409) when an inline secret
    needs a key this controller does not have; InvalidInput for ``***`` with nothing
    stored behind it."""

    def seal(path: str, key: str, value: Any) -> Any:
        if _is_sealed(value):  # copied from another pool or forged: never trusted
            raise InvalidInput(f"provider_config.{path}: {SEALED!r} values are Conveyor's own")
        if _is_reference(value):
            _check_id(path, value["credential"])
            return value
        if key.endswith(REF_SUFFIX):
            _check_id(path, value)
            return value
        if not isinstance(value, str) or not value or not looks_secret(key):
            return value
        if value == REDACTED:
            before = _previous(stored, path)
            if before is None or before == REDACTED:
                raise InvalidInput(
                    f"provider_config.{path}: '***' stands for the stored secret, and there is"
                    " none: give the value, or a credential reference"
                )
            return before
        if vault is None or vault.key is None:
            raise CredentialsNotConfigured(
                f"provider_config.{path} is a secret, and secrets are stored encrypted: "
                + NO_KEY
                + f"; or store it as a credential and write {key}{REF_SUFFIX}: ID"
            )
        return {
            SEALED: vault.key.encrypt(value.encode(), _context(pool, path)),
            "key_id": vault.key.key_id,
        }

    _check_no_doubles(config)
    return _walk(config, seal)


def _check_no_doubles(config: dict[str, Any], path: str = "") -> None:
    """``token`` and ``token_credential`` side by side: which one is meant?"""
    for key, value in config.items():
        here = f"{path}.{key}" if path else str(key)
        if key.endswith(REF_SUFFIX) and key[: -len(REF_SUFFIX)] in config:
            raise InvalidInput(
                f"provider_config.{here}: give {key[: -len(REF_SUFFIX)]} or {key}, not both"
            )
        if isinstance(value, dict) and not (path == "" and key in VERBATIM):
            _check_no_doubles(value, here)


def _check_id(path: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"provider_config.{path}: a credential reference is a credential id")


def references(config: dict[str, Any]) -> dict[str, str]:
    """path -> credential id, for every reference in ``config``."""
    found: dict[str, str] = {}

    def note(path: str, key: str, value: Any) -> Any:
        if _is_reference(value):
            found[path] = str(value["credential"])
        elif key.endswith(REF_SUFFIX) and isinstance(value, str):
            found[path] = value
        return value

    _walk(config, note)
    return found


def placeholders(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as a provider sees it, with every secret replaced by ``***``: enough
    to check the config's shape (make_provider) without any secret."""
    return _resolve(config, lambda path, value: REDACTED, lambda path, cred_id: REDACTED)


async def check_references(vault: CredentialVault | None, config: dict[str, Any]) -> None:
    """InvalidInput naming the credential ids that ``config`` references and that do not
    exist (a typo is caught when the pool is saved, not at its first scale-up)."""
    refs = references(config)
    if not refs:
        return
    if vault is None:
        raise CredentialsNotConfigured(NO_KEY)
    found = await get_credentials(vault.store, refs.values())
    missing = sorted({cred for cred in refs.values() if cred not in found})
    if missing:
        raise ProviderSecretError(
            f"provider_config references unknown credential(s): {', '.join(missing)}"
        )


async def resolve_config(
    vault: CredentialVault | None, pool: str, config: dict[str, Any]
) -> dict[str, Any]:
    """The provider config with its secrets in clear, for the provider only (in memory,
    never stored or logged): sealed values decrypted, references read from the
    credentials store. ProviderSecretError says which field fails and why."""
    refs = references(config)
    values: dict[str, str] = {}
    if refs:
        if vault is None:
            raise CredentialsNotConfigured(NO_KEY)
        found = await get_credentials(vault.store, refs.values())
        for path, cred_id in refs.items():
            record = found.get(cred_id)
            if record is None:
                raise ProviderSecretError(
                    f"pool {pool}: provider_config.{path}: credential {cred_id!r} does not exist"
                )
            try:
                fields = vault.open(record)
            except (DecryptError, ValueError) as exc:
                raise ProviderSecretError(
                    f"pool {pool}: provider_config.{path}: credential {cred_id!r} {exc}"
                ) from None
            values[path] = fields.get("value", fields.get("password", ""))

    def unseal(path: str, sealed: dict[str, Any]) -> str:
        if vault is None or vault.key is None:
            raise CredentialsNotConfigured(NO_KEY)
        if sealed.get("key_id") != vault.key.key_id:
            raise ProviderSecretError(
                f"pool {pool}: provider_config.{path} is encrypted with key "
                f"{sealed.get('key_id')}; this controller has key {vault.key.key_id}"
            )
        try:
            return vault.key.decrypt(str(sealed[SEALED]), _context(pool, path)).decode()
        except DecryptError:
            raise ProviderSecretError(
                f"pool {pool}: provider_config.{path} does not decrypt with this key"
            ) from None

    return _resolve(config, unseal, lambda path, cred_id: values[path])


def _resolve(
    config: dict[str, Any],
    unseal: Callable[[str, dict[str, Any]], str],
    dereference: Callable[[str, str], str],
) -> dict[str, Any]:
    def one(path: str, key: str, value: Any) -> Any:
        if _is_sealed(value):
            return unseal(path, value)
        if _is_reference(value):
            return dereference(path, str(value["credential"]))
        return value

    resolved = _walk(config, one)
    # NAME_credential: ID -> NAME: value (at any depth but inside verbatim subtrees).
    return _rename_references(resolved, config, dereference)


def _rename_references(
    resolved: dict[str, Any],
    original: dict[str, Any],
    dereference: Callable[[str, str], str],
    path: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in resolved.items():
        here = f"{path}.{key}" if path else str(key)
        if path == "" and key in VERBATIM:
            out[key] = value
        elif key.endswith(REF_SUFFIX) and isinstance(original.get(key), str):
            out[key[: -len(REF_SUFFIX)]] = dereference(here, str(original[key]))
        elif isinstance(value, dict) and isinstance(original.get(key), dict):
            out[key] = _rename_references(value, original[key], dereference, here)
        else:
            out[key] = value
    return out


def reseal_config(
    pool: str, config: dict[str, Any], keys: dict[str, SecretKey], new: SecretKey
) -> dict[str, Any]:
    """``config`` with every sealed value decrypted with the key it names (one of
    ``keys``, by key id) and sealed again with ``new``: a key rotation.
    ProviderSecretError when a value names an unknown key or does not decrypt."""

    def again(path: str, key: str, value: Any) -> Any:
        if not _is_sealed(value):
            return value
        old = keys.get(str(value.get("key_id")))
        if old is None:
            raise ProviderSecretError(
                f"pool {pool}: provider_config.{path} is sealed with key {value.get('key_id')},"
                " which is neither the current key nor the new one"
            )
        try:
            plaintext = old.decrypt(str(value[SEALED]), _context(pool, path))
        except DecryptError:
            raise ProviderSecretError(
                f"pool {pool}: provider_config.{path} does not decrypt"
            ) from None
        return {SEALED: new.encrypt(plaintext, _context(pool, path)), "key_id": new.key_id}

    return _walk(config, again)
