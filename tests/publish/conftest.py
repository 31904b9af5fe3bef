from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.publish.servers import DavServer, PypiServer


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[DavServer]:
    server = DavServer.start(tmp_path / "dav")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pypi(tmp_path: Path) -> Iterator[PypiServer]:
    server = PypiServer.start(tmp_path / "pypi")
    try:
        yield server
    finally:
        server.stop()
