"""Which values of a pool's ``provider_config`` are secrets, and how they are shown.
Pure rules shared by the API and the autoscaler (conveyor.providers.secrets, which seals
and resolves them) and configuration as code (conveyor.core.config_kinds, which must
accept exactly the references the API accepts and refuse a secret written in Git).

* a **reference**: ``NAME_credential: ID`` or ``{credential: ID}`` as a value;
* a **sealed** value: ``{"$sealed": …, "key_id": …}`` (encrypted with the credentials key);
* an **inline secret**: a non-empty string at a field whose name looks secret.

``pod_template`` (a Kubernetes manifest) is kept verbatim and never looked into.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "REDACTED",
    "REF_SUFFIX",
    "SEALED",
    "VERBATIM",
    "inline_secrets",
    "is_reference",
    "is_sealed",
    "looks_secret",
    "previous",
    "redacted",
    "walk",
]

SEALED = "$sealed"
#: What the API, the pages and a config export show for a secret; sent back, it keeps
#: the stored value.
REDACTED = "***"
REF_SUFFIX = "_credential"
#: Field names whose string values are secrets (checked case-insensitively).
_SECRET_NAME = re.compile(r"token|passw|pass$|^pass|secret|key|credential|auth", re.I)
#: Fields that name where a secret is, not the secret.
_NOT_SECRET = re.compile(r"(_file|_path|_credential|_url)$", re.I)
#: Subtrees stored as given (a Kubernetes manifest references Secrets by name).
VERBATIM = frozenset({"pod_template"})


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and SEALED in value


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"credential"}


def walk(
    config: dict[str, Any],
    on_value: Callable[[str, str, Any], Any],
    path: str = "",
) -> dict[str, Any]:
    """A copy of ``config`` where every value at a key (not under a verbatim subtree)
    went through ``on_value(path, key, value)``; mappings that are neither sealed
    values nor references are walked into."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        here = f"{path}.{key}" if path else str(key)
        if not path and key in VERBATIM:
            out[key] = value
        elif isinstance(value, dict) and not is_sealed(value) and not is_reference(value):
            out[key] = walk(value, on_value, here)
        else:
            out[key] = on_value(here, str(key), value)
    return out


def previous(config: dict[str, Any] | None, path: str) -> Any:
    """The value at a dotted ``path`` of ``config`` (None if there is none)."""
    node: Any = config or {}
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for API answers, pages and exports: sealed values, and secret-looking
    fields still in clear (stored before sealing existed), as ``***``; references
    (credential ids) and ``pod_template`` as stored."""

    def hide(path: str, key: str, value: Any) -> Any:
        if is_sealed(value):
            return REDACTED
        if is_reference(value) or key.endswith(REF_SUFFIX):
            return value
        if isinstance(value, str) and value and looks_secret(key):
            return REDACTED
        return value

    return walk(config, hide)


def inline_secrets(config: dict[str, Any]) -> list[str]:
    """The dotted paths of ``config`` that hold a secret in clear (not ``***``, not a
    reference): what a file in a config repository must never contain."""
    found: list[str] = []

    def note(path: str, key: str, value: Any) -> Any:
        if is_sealed(value) or is_reference(value) or key.endswith(REF_SUFFIX):
            return value
        if isinstance(value, str) and value and value != REDACTED and looks_secret(key):
            found.append(path)
        return value

    walk(config, note)
    return found
