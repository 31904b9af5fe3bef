"""Credentials on the agent: putting bound values into a step's environment or a
temporary file, and masking every bound value in what leaves the agent.

The values arrive with the build's start answer and live only in this process's
memory, in the step's environment and, for ``file`` bindings, in a 0600 file under
a 0700 folder outside the workspace that is removed when the step ends, however it
ends (the agent removes leftovers of a crashed run when it starts).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core.masking import StreamMasker, mask_text, secret_patterns
from conveyor.core.plan import CredentialBind
from conveyor.core.states import StepState
from conveyor.credentials.values import masked_strings

if TYPE_CHECKING:
    from conveyor.agent.executor import BuildReporter

__all__ = [
    "CredentialUnavailable",
    "MaskingReporter",
    "bind_credentials",
    "build_patterns",
    "clear_secrets_dir",
]


class CredentialUnavailable(Exception):
    """A step binds a credential the controller could not resolve (message says why)."""


def build_patterns(resolved: dict[str, dict[str, str]]) -> list[bytes]:
    """What to mask in this build's output: every bound secret value (and its lines)."""
    values: list[str] = []
    for fields in resolved.values():
        if "error" not in fields:
            values += masked_strings(fields.get("kind", "text"), fields)
    return secret_patterns(values)


def clear_secrets_dir(root: Path) -> None:
    """Remove credential files an earlier agent process left (it was killed mid-step)."""
    shutil.rmtree(root, ignore_errors=True)


def _write_secret_file(folder: Path, text: str) -> Path:
    path = folder / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


@contextmanager
def bind_credentials(
    binds: list[CredentialBind],
    resolved: dict[str, dict[str, str]],
    secrets_root: Path,
) -> Iterator[dict[str, str]]:
    """The environment variables the bindings add; temp files exist inside the block
    and are removed on the way out (also when the step fails, times out or is
    cancelled). Raises :class:`CredentialUnavailable` for an unresolved id."""
    env: dict[str, str] = {}
    folders: list[Path] = []
    try:
        for bind in binds:
            fields = resolved.get(bind.id)
            if fields is None:
                raise CredentialUnavailable(f"credential {bind.id!r} was not sent to this agent")
            if "error" in fields:
                raise CredentialUnavailable(fields["error"])
            if bind.env is not None:
                env[bind.env] = fields.get("value", "")
            if bind.username_env is not None:
                env[bind.username_env] = fields.get("username", "")
            if bind.password_env is not None:
                env[bind.password_env] = fields.get("password", "")
            if bind.file is not None:
                secrets_root.mkdir(parents=True, exist_ok=True, mode=0o700)
                folder = Path(tempfile.mkdtemp(prefix="cred-", dir=secrets_root))
                folders.append(folder)
                env[bind.file] = str(_write_secret_file(folder, fields.get("value", "")))
        yield env
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


class MaskingReporter:
    """A :class:`~conveyor.agent.executor.BuildReporter` in front of another one: build
    output is masked before it reaches the outbox (so before it leaves the agent).

    A possible beginning of a secret is held back between writes; it is released
    when no step is running any more (a step's end, and the end of the build via
    :meth:`flush`), never while a parallel sibling may still complete it."""

    def __init__(self, inner: BuildReporter, patterns: list[bytes]) -> None:
        self.inner = inner
        self.patterns = patterns
        self._masker = StreamMasker(patterns)
        self._running: set[str] = set()

    async def log(self, data: bytes) -> None:
        out = self._masker.feed(data)
        if out:
            await self.inner.log(out)

    async def flush(self) -> None:
        out = self._masker.flush()
        if out:
            await self.inner.log(out)

    async def step_started(self, key: str, attempt: int) -> None:
        self._running.add(key)
        await self.inner.step_started(key, attempt)

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        self._running.discard(key)
        if not self._running:
            await self.flush()
        await self.inner.step_finished(key, state, exit_code, attempt)

    async def upload_artifact(self, rel_path: str, file: Path) -> None:
        await self.inner.upload_artifact(rel_path, file)

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        await self.inner.record_publication(step_key, publication)

    def mask(self, text: str | None) -> str | None:
        """A message (failure cause) with every secret masked."""
        return None if text is None else mask_text(text, self.patterns)
