"""Subprocesses started from these tests (CLI runs in other folders, agents started by
fake Docker/Kubernetes servers) must run this checkout: make PYTHONPATH absolute."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _absolute_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = os.environ.get("PYTHONPATH", "")
    if paths:
        absolute = os.pathsep.join(str(Path(p).resolve()) for p in paths.split(os.pathsep) if p)
        monkeypatch.setenv("PYTHONPATH", absolute)
