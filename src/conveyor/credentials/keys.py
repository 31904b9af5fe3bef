"""The encryption key of the credentials store and AES-GCM encryption with it.

A key is 32 random bytes, written base64 (one line) in a key file or in the
``CONVEYOR_SECRET_KEY`` environment variable. Each encrypted value records the
*key id* (the start of the SHA-256 of the key: it names the key without revealing
it), so that a value encrypted with another key is reported as such instead of as
garbage, and so that a rotation can be checked.

The associated data of every encryption is the credential's id and kind: a
ciphertext copied onto another credential's row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DEFAULT_KEY_FILE",
    "KEY_BYTES",
    "DecryptError",
    "SecretKey",
    "create_key_file",
    "key_from_text",
    "load_key_file",
]

KEY_BYTES = 32
NONCE_BYTES = 12
#: The key file ``conveyor up`` creates in its home when no key is configured.
DEFAULT_KEY_FILE = "secret.key"


class DecryptError(ValueError):
    """A value that this key cannot decrypt (another key, or tampered with)."""


def key_from_text(text: str, where: str) -> bytes:
    """The 32 key bytes from base64 text; ``ValueError`` naming ``where`` otherwise.
    The message never contains the text itself."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not valid base64 (expected 32 random bytes)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{where}: the key is {len(raw)} bytes; it must be {KEY_BYTES}")
    return raw


def load_key_file(path: Path) -> bytes:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"secret key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret key file {path}: not a base64 text file") from None
    return key_from_text(text, f"secret key file {path}")


def create_key_file(path: Path) -> bool:
    """Write a new random key to ``path`` (mode 0600) unless the file exists.
    Returns whether it was created; never overwrites a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
    return True


@dataclass(frozen=True)
class SecretKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_BYTES:
            raise ValueError(f"a secret key is {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never the key itself, also not in tracebacks
        return f"SecretKey(id={self.key_id})"

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"conveyor-key-id:" + self.raw).hexdigest()[:16]

    def encrypt(self, plaintext: bytes, context: bytes) -> str:
        """base64(nonce + ciphertext + tag); ``context`` is authenticated, not stored."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.raw).encrypt(nonce, plaintext, context)
        return base64.b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, context: bytes) -> bytes:
        try:
            blob = base64.b64decode(token, validate=True)
            return AESGCM(self.raw).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context)
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptError("the value does not decrypt with this key") from None
