"""The benchmarks' child processes (controllers, agents) run the code of this checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def use_this_tree() -> None:
    """Put this checkout's ``src/`` first on ``PYTHONPATH`` and make every entry absolute.

    Children run in their own directories (a temporary home), where a relative
    ``PYTHONPATH=src`` would silently fall back to the installed package, or to
    nothing at all."""
    src = str(SRC)
    rest = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *[p for p in rest if p != src]])
    if src not in sys.path:  # and this process imports it too (conveyor.cluster...)
        sys.path.insert(0, src)
