"""A throwaway PostgreSQL server for tests that stop and restart the database
(the machine's shared server on :5432 is never restarted by tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(args: list[str]) -> list[str]:
    # The server refuses to run as root: run its tools as the postgres user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class ThrowawayPostgres:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cvy-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> ThrowawayPostgres:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return self

    def _ctl(self, *args: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-o", options,
                          "-l", str(self.root / "server.log"), "-w", "-t", "60", *args]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> ThrowawayPostgres:
        self._ctl("start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
