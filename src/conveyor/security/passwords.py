"""argon2id password hashes (argon2-cffi). Hashing is slow on purpose: run it off the loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from conveyor.errors import InvalidInput

_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters

MIN_PASSWORD_LENGTH = 8
#: A hash to verify against when the user does not exist: the answer takes as long.
_DUMMY_HASH = _hasher.hash("conveyor-no-such-user")


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise InvalidInput("password: at most 1024 characters")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    return await asyncio.to_thread(_verify, stored, password)
