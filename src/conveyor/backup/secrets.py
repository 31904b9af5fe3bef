"""Files kept in a backup as encrypted secrets (e.g. the credentials key file).

A secret is sealed with a key derived from a passphrase (scrypt, n=2^15, r=8, p=1,
a random 16-byte salt) and AES-256-GCM (a random 12-byte nonce), so a backup copy on
a shared bucket never holds it in clear. The file name is authenticated too, so a
sealed file cannot be passed off as another one.

Layout: ``MAGIC | salt(16) | nonce(12) | ciphertext+tag``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from conveyor.errors import InvalidInput

MAGIC = b"CVYSEC1\n"
SALT = 16
NONCE = 12
MIN_PASSPHRASE = 8


def _key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def check_passphrase(passphrase: str | None) -> str:
    if not passphrase or len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(
            f"a passphrase of at least {MIN_PASSPHRASE} characters is needed to include"
            " secrets (--passphrase or CONVEYOR_BACKUP_PASSPHRASE)"
        )
    return passphrase


def seal(name: str, data: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(SALT), os.urandom(NONCE)
    sealed = AESGCM(_key(check_passphrase(passphrase), salt)).encrypt(nonce, data, name.encode())
    return MAGIC + salt + nonce + sealed


def unseal(name: str, blob: bytes, passphrase: str) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + SALT + NONCE + 16:
        raise InvalidInput(f"secret {name!r} is not a sealed Conveyor secret")
    body = blob[len(MAGIC) :]
    salt, nonce, sealed = body[:SALT], body[SALT : SALT + NONCE], body[SALT + NONCE :]
    try:
        return AESGCM(_key(passphrase, salt)).decrypt(nonce, sealed, name.encode())
    except InvalidTag as exc:
        raise InvalidInput(f"secret {name!r}: wrong passphrase, or the file is damaged") from exc
