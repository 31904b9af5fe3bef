"""A backup's manifest, and the layout of backups at a target.

A target is any blob store (a folder or ``s3://BUCKET/PREFIX``). Each backup is a
folder of it, named by its id (``20261204T193000Z-full-3fa9c1``)::

    ID/manifest.json          written last: a backup without one is incomplete
    ID/manifest.sha256        SHA-256 of manifest.json (a damaged manifest is caught)
    ID/db/TABLE.jsonl.gz      the logical export (conveyor.backup.logical)
    ID/objects/AB/SHA256      blob contents, content-addressed
    ID/config/NAME            configuration files (notifications, failure patterns)
    ID/secrets/NAME.sealed    files kept as encrypted secrets (--include-key)

``files`` lists every file of the backup's own folder with its size and SHA-256;
``blobs`` maps every blob key of the source store (``logs/12.log``) to its content's
SHA-256 and the backup (this one or an ancestor) whose ``objects/`` holds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from conveyor.core.backup_retention import BackupInfo, Kind
from conveyor.errors import ConveyorError

FORMAT = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"


class BackupDamaged(ConveyorError):
    """A backup failed its checks: nothing was (or will be) written from it."""

    status = 422
    title = "Backup damaged"

    def __init__(self, backup_id: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        super().__init__(f"backup {backup_id} is damaged: {shown}")
        self.problems = problems


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class BlobEntry:
    sha256: str
    size: int
    holder: str  # the backup whose objects/ folder has the content


def object_path(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256}"


@dataclass
class Manifest:
    id: str
    kind: Kind
    parent: str | None
    created_at: datetime
    database: str
    revision: str | None
    conveyor_version: str
    row_counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    blobs: dict[str, BlobEntry] = field(default_factory=dict)
    config: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    artifacts: bool = True
    source_blobs: str = ""

    @property
    def info(self) -> BackupInfo:
        return BackupInfo(self.id, self.kind, self.created_at, self.parent)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["format"] = FORMAT
        data["created_at"] = self.created_at.isoformat()
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, backup_id: str) -> Manifest:
        try:
            data = json.loads(raw)
            if data.pop("format") != FORMAT:
                raise ValueError(f"unknown manifest format (this Conveyor reads {FORMAT})")
            data["created_at"] = datetime.fromisoformat(data["created_at"])
            data["files"] = {k: FileEntry(**v) for k, v in data["files"].items()}
            data["blobs"] = {k: BlobEntry(**v) for k, v in data["blobs"].items()}
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupDamaged(backup_id, [f"{MANIFEST} is unreadable ({exc})"]) from exc
        if manifest.id != backup_id:
            raise BackupDamaged(backup_id, [f"{MANIFEST} names backup {manifest.id}"])
        return manifest


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
