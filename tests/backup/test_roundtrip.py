"""Round trips through `conveyor backup create` and `conveyor restore` (real processes,
real PostgreSQL): every row of every table identical (compared through the logical
export), every log and artifact byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

from tests.backup.conftest import Source, blob_files, logical_rows, run_cli


def backup(source: Source, target: Path, *extra: str) -> str:
    done = run_cli(
        "backup",
        "create",
        "--to",
        str(target),
        "--home",
        str(source.home),
        "--database",
        source.database_url,
        "--blob-dir",
        str(source.blob_dir),
        *extra,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]


def restore(target: Path, backup_id: str, database: str, blobs: Path, *extra: str) -> object:
    return run_cli(
        "restore",
        backup_id,
        "--from",
        str(target),
        "--database",
        database,
        "--blobs",
        str(blobs),
        *extra,
    )


def state(source: Source) -> tuple[dict[str, list[dict[str, object]]], dict[str, bytes], Path]:
    """Every row and every blob of the source, before a backup (the backup's own run
    record is written after its snapshot)."""
    return (
        logical_rows(source.database_url),
        blob_files(source.blob_dir),
        source.home / "secret.key",
    )


def assert_credential_decrypts(database: str, key_file: Path) -> None:
    """The restored credential still opens with the source's key (it stays encrypted in
    the backup; the key is not in it unless --include-key)."""
    import asyncio

    from conveyor.credentials.keys import SecretKey, load_key_file
    from conveyor.credentials.service import CredentialVault
    from conveyor.store import open_store
    from conveyor.store.credentials import get_credential
    from tests.backup.conftest import CREDENTIAL_ID, CREDENTIAL_VALUE

    async def opened() -> dict[str, str]:
        store = open_store(database)
        try:
            record = await get_credential(store, CREDENTIAL_ID)
            assert record is not None
            assert CREDENTIAL_VALUE not in record.secret  # encrypted at rest
            key = SecretKey(load_key_file(key_file))
            return CredentialVault(store, key).open(record)
        finally:
            await store.close()

    assert CREDENTIAL_VALUE in asyncio.run(opened()).values()


def assert_identical(
    expected: tuple[dict[str, list[dict[str, object]]], dict[str, bytes], Path],
    database: str,
    blobs: Path,
) -> None:
    before, originals, key_file = expected
    after = logical_rows(database)
    assert before.keys() == after.keys()
    for table in before:
        assert before[table] == after[table], table
    for table in (
        "jobs",
        "job_versions",
        "builds",
        "build_steps",
        "artifacts",
        "users",
        "user_tokens",
        "user_grants",
        "agent_tokens",
        "audit_events",
        "credentials",
        "notification_deliveries",
        "backup_runs",
    ):
        assert before[table], f"{table} should have rows to compare"
    assert_credential_decrypts(database, key_file)
    assert any(k.startswith("logs/") for k in originals)
    assert any(k.startswith("artifacts/") for k in originals)
    assert blob_files(blobs) == originals


def test_sqlite_to_sqlite(sqlite_source: Source, tmp_path: Path) -> None:
    expected = state(sqlite_source)
    backup_id = backup(sqlite_source, tmp_path / "backups")
    database = f"sqlite:///{tmp_path / 'restored.db'}"
    done = restore(tmp_path / "backups", backup_id, database, tmp_path / "blobs")
    assert done.returncode == 0, done.stderr
    assert_identical(expected, database, tmp_path / "blobs")


def test_sqlite_to_postgresql(sqlite_source: Source, tmp_path: Path, new_pg: object) -> None:
    expected = state(sqlite_source)
    backup_id = backup(sqlite_source, tmp_path / "backups")
    database = new_pg()  # type: ignore[operator]
    done = restore(tmp_path / "backups", "latest", database, tmp_path / "blobs")
    assert done.returncode == 0, done.stderr
    assert backup_id in done.stdout
    assert_identical(expected, database, tmp_path / "blobs")


def test_postgresql_to_postgresql(pg_source: Source, tmp_path: Path, new_pg: object) -> None:
    expected = state(pg_source)
    backup_id = backup(pg_source, tmp_path / "backups")
    database = new_pg()  # type: ignore[operator]
    done = restore(tmp_path / "backups", backup_id, database, tmp_path / "blobs")
    assert done.returncode == 0, done.stderr
    assert_identical(expected, database, tmp_path / "blobs")
    # Sequences moved past the restored ids: a new row gets a fresh id.
    import asyncio
    from datetime import UTC, datetime

    from conveyor.core.permissions import Role
    from conveyor.store import open_store
    from conveyor.store import security as security_db

    async def new_user_id() -> int:
        store = open_store(database)
        try:
            user = await security_db.create_user(
                store, "after-restore", None, datetime.now(UTC), Role.VIEWER
            )
            return user.id
        finally:
            await store.close()

    max_id = max(int(row["id"]) for row in logical_rows(pg_source.database_url)["users"])  # type: ignore[call-overload]
    assert asyncio.run(new_user_id()) > max_id


def test_refuses_a_non_empty_database_unless_forced(sqlite_source: Source, tmp_path: Path) -> None:
    expected = state(sqlite_source)
    backup_id = backup(sqlite_source, tmp_path / "backups")
    database = f"sqlite:///{tmp_path / 'restored.db'}"
    assert restore(tmp_path / "backups", backup_id, database, tmp_path / "b1").returncode == 0
    again = restore(tmp_path / "backups", backup_id, database, tmp_path / "b2")
    assert again.returncode == 2
    assert "is not empty" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert not (tmp_path / "b2").exists() or not any((tmp_path / "b2").rglob("*.log"))
    forced = restore(tmp_path / "backups", backup_id, database, tmp_path / "b2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert_identical(expected, database, tmp_path / "b2")


def test_incremental_holds_only_new_blobs(sqlite_source: Source, tmp_path: Path) -> None:
    target = tmp_path / "backups"
    full = backup(sqlite_source, target)
    extra = sqlite_source.blob_dir / "artifacts" / "999" / "new.txt"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"only in the incremental\n")
    try:
        expected = state(sqlite_source)
        incremental = backup(sqlite_source, target, "--incremental")
        manifest = json.loads((target / incremental / "manifest.json").read_text())
        assert manifest["kind"] == "incremental" and manifest["parent"] == full
        objects = [f for f in manifest["files"] if f.startswith("objects/")]
        assert len(objects) == 1  # the new blob only
        assert manifest["blobs"]["artifacts/999/new.txt"]["holder"] == incremental
        assert (
            manifest["blobs"][
                "logs/"
                + sorted(k.split("/", 1)[1] for k in manifest["blobs"] if k.startswith("logs/"))[0]
            ]["holder"]
            == full
        )
        listed = run_cli("backup", "list", "--to", str(target))
        assert full in listed.stdout and incremental in listed.stdout
        database = f"sqlite:///{tmp_path / 'restored.db'}"
        done = restore(target, incremental, database, tmp_path / "blobs")
        assert done.returncode == 0, done.stderr
        assert_identical(expected, database, tmp_path / "blobs")
    finally:
        extra.unlink()
        extra.parent.rmdir()


def test_no_artifacts_and_encrypted_key(sqlite_source: Source, tmp_path: Path) -> None:
    key = tmp_path / "credentials.key"
    key.write_bytes(b"super-secret-key-material\n")
    target = tmp_path / "backups"
    env = {"CONVEYOR_BACKUP_PASSPHRASE": "correct horse battery"}
    done = run_cli(
        "backup",
        "create",
        "--to",
        str(target),
        "--home",
        str(sqlite_source.home),
        "--database",
        sqlite_source.database_url,
        "--blob-dir",
        str(sqlite_source.blob_dir),
        "--no-artifacts",
        "--include-key",
        str(key),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    backup_id = done.stdout.split()[1]
    manifest = json.loads((target / backup_id / "manifest.json").read_text())
    assert not any(k.startswith("artifacts/") for k in manifest["blobs"])
    sealed = (target / backup_id / "secrets" / "credentials.key.sealed").read_bytes()
    assert b"super-secret" not in sealed
    database = f"sqlite:///{tmp_path / 'r.db'}"
    wrong = run_cli(
        "restore",
        backup_id,
        "--from",
        str(target),
        "--database",
        database,
        "--blobs",
        str(tmp_path / "blobs"),
        "--files-to",
        str(tmp_path / "files"),
        "--passphrase",
        "wrong passphrase",
    )
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr
    assert not (tmp_path / "r.db").exists() or not logical_rows(database).get("builds")
    right = run_cli(
        "restore",
        backup_id,
        "--from",
        str(target),
        "--database",
        database,
        "--blobs",
        str(tmp_path / "blobs"),
        "--files-to",
        str(tmp_path / "files"),
        env=env,
    )
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "files" / "credentials.key").read_bytes() == key.read_bytes()
    # Without a passphrase, including a key is refused before anything is written.
    refused = run_cli(
        "backup",
        "create",
        "--to",
        str(tmp_path / "other"),
        "--home",
        str(sqlite_source.home),
        "--database",
        sqlite_source.database_url,
        "--include-key",
        str(key),
        env={"CONVEYOR_BACKUP_PASSPHRASE": ""},
    )
    assert refused.returncode == 2 and "passphrase" in refused.stderr
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
