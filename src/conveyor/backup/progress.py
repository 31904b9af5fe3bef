"""How long backup work reports its progress (the CLI draws Rich progress bars)."""

from __future__ import annotations


class Reporter:
    """Progress of a long operation; the default one shows nothing."""

    def stage(self, description: str, total: float | None) -> None:
        """A new stage begins; ``total`` in its own unit (bytes or rows), None if unknown."""

    def advance(self, amount: float) -> None:
        """Some of the current stage is done."""


QUIET = Reporter()
