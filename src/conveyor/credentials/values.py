"""What a credential holds, by kind, and how it is checked and serialised.

* ``text``: one secret string (a token, a password);
* ``username_password``: a username and a password (only the password is secret
  in logs; both are encrypted);
* ``file``: the contents of a file (UTF-8 text), e.g. a kubeconfig;
* ``ssh_key``: a private key (text).

The plaintext that is encrypted is the JSON of the value fields.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from conveyor.errors import InvalidInput

__all__ = [
    "KINDS",
    "MAX_VALUE_BYTES",
    "CredentialKind",
    "check_credential_id",
    "check_value",
    "decode_value",
    "encode_value",
    "masked_strings",
]

CredentialKind = Literal["text", "username_password", "file", "ssh_key"]
KINDS: tuple[str, ...] = ("text", "username_password", "file", "ssh_key")
MAX_VALUE_BYTES = 64 * 1024
MAX_ID_LENGTH = 200

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_credential_id(value: str) -> str:
    """Ids are folder-scoped like job names: ``team-a/deploy-key``."""
    if (
        not value
        or len(value) > MAX_ID_LENGTH
        or not all(_SEGMENT.fullmatch(s) for s in value.split("/"))
    ):
        raise InvalidInput(
            f"invalid credential id {value[:MAX_ID_LENGTH]!r}: use [A-Za-z0-9][A-Za-z0-9._-]* "
            f"segments joined by '/', at most {MAX_ID_LENGTH} characters"
        )
    return value


def _check_text(field: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a string")
    if not value and not allow_empty:
        raise InvalidInput(f"{field}: must not be empty")
    if "\0" in value:
        raise InvalidInput(f"{field}: must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field}: must be valid Unicode text") from None
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise InvalidInput(f"{field}: longer than {MAX_VALUE_BYTES // 1024} KiB")
    return value


def check_value(
    kind: str, value: str | None, username: str | None, password: str | None
) -> dict[str, str]:
    """The value fields of a credential of ``kind`` from what a request gave; an
    :class:`InvalidInput` that never repeats the secret otherwise."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown credential kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "username_password":
        if value is not None:
            raise InvalidInput("a username_password credential takes username and password")
        if username is None or password is None:
            raise InvalidInput("a username_password credential needs username and password")
        return {
            "username": _check_text("username", username),
            "password": _check_text("password", password),
        }
    if username is not None or password is not None:
        raise InvalidInput(f"a {kind} credential takes value, not username/password")
    if value is None:
        raise InvalidInput(f"a {kind} credential needs a value")
    return {"value": _check_text("value", value)}


def encode_value(fields: dict[str, str]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode("utf-8", "surrogatepass")


def decode_value(plaintext: bytes) -> dict[str, str]:
    data = json.loads(plaintext.decode("utf-8", "surrogatepass"))
    if not isinstance(data, dict):
        raise ValueError("a credential value is a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def masked_strings(kind: str, fields: dict[str, str]) -> list[str]:
    """The secret parts of a value: what build output must never show."""
    if kind == "username_password":
        return [fields.get("password", "")]
    return [fields.get("value", "")]
