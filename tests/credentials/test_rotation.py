"""Key rotation re-encrypts every credential in one transaction: afterwards only the
new key is needed, the old one opens nothing; a rotation that cannot open a row
changes nothing. Store level on SQLite and PostgreSQL, then the real CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

import conveyor
from conveyor.credentials.keys import SecretKey, create_key_file, load_key_file
from conveyor.credentials.rotation import RotationError, rotate_store
from conveyor.credentials.service import CredentialVault
from conveyor.runtime import Runtime
from conveyor.store.credentials import credentials, get_credential
from tests.credentials.conftest import new_key_text
from tests.harness import Controller

PLAN = {
    "stages": [
        {
            "key": "0",
            "name": "s",
            "steps": [
                {
                    "key": "0.0",
                    "stage": "s",
                    "kind": "sh",
                    "name": "x",
                    "credentials": [{"id": "a/one", "env": "A"}, {"id": "b/two", "env": "B"}],
                }
            ],
        }
    ]
}


def _key(text: str) -> SecretKey:
    return SecretKey(base64.b64decode(text))


async def _seed(runtime: Runtime) -> CredentialVault:
    vault = runtime.credentials
    assert vault is not None
    now = runtime.clock()
    await vault.create("a/one", "text", None, {"value": "value-one"}, "t", now)
    await vault.create("b/two", "ssh_key", None, {"value": "KEY\nLINES\n"}, "t", now)
    return vault


async def test_rotation_reencrypts_everything_and_retires_the_old_key(
    runtime: Runtime, key_text: str
) -> None:
    old_vault = await _seed(runtime)
    old, new = _key(key_text), _key(new_key_text())
    assert await rotate_store(runtime.store, old, new) == 2
    async with runtime.store.read() as conn:
        key_ids = {r.key_id for r in (await conn.execute(select(credentials))).all()}
    assert key_ids == {new.key_id}
    # Only the new key is needed now.
    resolved = await CredentialVault(runtime.store, new).resolve(PLAN)
    assert resolved == {
        "a/one": {"kind": "text", "value": "value-one"},
        "b/two": {"kind": "ssh_key", "value": "KEY\nLINES\n"},
    }
    # A controller still holding the old key says so instead of guessing.
    stale = await old_vault.resolve(PLAN)
    assert "encrypted with key " + new.key_id in stale["a/one"]["error"]
    # Running it again (e.g. after an interruption) is harmless.
    assert await rotate_store(runtime.store, old, new) == 2
    assert (await CredentialVault(runtime.store, new).resolve(PLAN))["a/one"]["value"] == (
        "value-one"
    )


async def test_a_row_no_key_opens_rolls_the_whole_rotation_back(
    runtime: Runtime, key_text: str
) -> None:
    await _seed(runtime)
    before = await get_credential(runtime.store, "a/one")
    async with runtime.store.write() as conn:  # b/two: sealed with some unknown key
        await conn.execute(
            update(credentials).where(credentials.c.id == "b/two").values(key_id="0123456789abcdef")
        )
    with pytest.raises(RotationError, match="b/two"):
        await rotate_store(runtime.store, _key(key_text), _key(new_key_text()))
    after = await get_credential(runtime.store, "a/one")
    assert before is not None and after is not None
    assert (after.secret, after.key_id) == (before.secret, before.key_id)  # untouched


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Our sources first, whatever the working directory (PYTHONPATH may be relative).
    src = str(Path(conveyor.__file__).resolve().parents[1])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": src}
    for name in ("CONVEYOR_SECRET_KEY", "CONVEYOR_SECRET_KEY_FILE", "CONVEYOR_DATABASE_URL"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_rotate_key_cli_end_to_end(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue("fresh_pg_url") if db == "postgresql" else None
    home = tmp_path / "home"
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    assert _cli("admin", "gen-key", str(old_file), cwd=tmp_path).returncode == 0
    assert oct(old_file.stat().st_mode & 0o777) == "0o600"
    again = _cli("admin", "gen-key", str(old_file), cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    old_key = old_file.read_text()
    assert _cli("admin", "gen-key", str(new_file), cwd=tmp_path).returncode == 0

    controller = Controller(home, database, extra_args=["--secret-key-file", str(old_file)])
    controller.start()
    try:
        with controller.client() as c:
            for i in range(3):
                r = c.post("/api/v1/credentials", json={"id": f"k{i}", "value": f"value-{i}"})
                assert r.status_code == 201
    finally:
        controller.stop()

    db_args = ["--home", str(home)] + (["--database", database] if database else [])
    same = _cli("admin", "rotate-key", "--new-key-file", str(old_file), "--secret-key-file",
                str(old_file), *db_args, cwd=tmp_path)  # fmt: skip
    assert same.returncode == 2 and "is the current key" in same.stderr
    missing = _cli("admin", "rotate-key", "--new-key-file", str(tmp_path / "nope"),
                   "--secret-key-file", str(old_file), *db_args, cwd=tmp_path)  # fmt: skip
    assert (
        missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    )
    nokey = _cli("admin", "rotate-key", "--new-key-file", str(new_file), *db_args, cwd=tmp_path)
    assert nokey.returncode == 2 and "no credentials key" in nokey.stderr

    done = _cli("admin", "rotate-key", "--new-key-file", str(new_file), "--secret-key-file",
                str(old_file), *db_args, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    new = SecretKey(load_key_file(new_file))
    assert "re-encrypted 3 credential(s)" in done.stdout and new.key_id in done.stdout

    # The old key is gone for good: a controller with only the new key serves them.
    old_file.unlink()
    controller = Controller(home, database, extra_args=["--secret-key-file", str(new_file)])
    controller.start()
    try:
        with controller.client() as c:
            listed = c.get("/api/v1/credentials").json()
            assert {x["key_id"] for x in listed} == {new.key_id}
            assert old_key not in str(listed)
    finally:
        controller.stop()
    # And the values decrypt with the new key alone.
    import asyncio

    from conveyor.store import open_store

    async def resolve() -> dict[str, dict[str, str]]:
        store = open_store(database or f"sqlite:///{home / 'conveyor.db'}")
        try:
            plan = {**PLAN}
            plan["stages"][0]["steps"][0]["credentials"] = [  # type: ignore[index]
                {"id": f"k{i}", "env": "X"} for i in range(3)
            ]
            return await CredentialVault(store, new).resolve(plan)
        finally:
            await store.close()

    resolved = asyncio.run(resolve())
    assert {k: v["value"] for k, v in resolved.items()} == {f"k{i}": f"value-{i}" for i in range(3)}


def _run_up_once(tmp_path: Path, home: Path) -> None:
    """Start `conveyor up` (no agents), wait until it serves, Ctrl-C it."""
    import signal

    from tests.harness import free_port, wait_until

    env = {**os.environ, "CONVEYOR_HOME": str(home)}
    env["PYTHONPATH"] = str(Path(conveyor.__file__).resolve().parents[1])
    for name in (
        "CONVEYOR_URL",
        "CONVEYOR_TOKEN",
        "CONVEYOR_SECRET_KEY",
        "CONVEYOR_SECRET_KEY_FILE",
    ):
        env.pop(name, None)
    with (tmp_path / "up.log").open("ab") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "up", "--port", str(free_port()), "--agents", "0",
             "--no-examples"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_until((home / "cli.json").exists, 60, what="conveyor up to serve")
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    (home / "cli.json").unlink()


def test_up_creates_its_key_once(tmp_path: Path) -> None:
    """`conveyor up` with no key configured makes HOME/secret.key (0600) and keeps it."""
    home = tmp_path / "home"
    _run_up_once(tmp_path, home)
    key_file = home / "secret.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    first = key_file.read_text()
    SecretKey(load_key_file(key_file))  # a valid key
    _run_up_once(tmp_path, home)
    assert key_file.read_text() == first
    assert not create_key_file(key_file)  # never overwritten


def test_server_refuses_a_bad_key_clearly(tmp_path: Path) -> None:
    """A missing key file or a malformed key stops the controller at start: exit 2, a
    message that names the source and never shows the key, no traceback."""
    missing = _cli("server", "--home", str(tmp_path / "h1"), "--port", "1",
                   "--secret-key-file", str(tmp_path / "missing.key"), cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2, missing.stderr
    assert "missing.key" in "".join(missing.stderr.split()) and "Traceback" not in missing.stderr
    short = base64.b64encode(b"x" * 16).decode()
    bad = _cli("server", "--home", str(tmp_path / "h2"), "--port", "1", cwd=tmp_path,
               env={"CONVEYOR_SECRET_KEY": short})  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "CONVEYOR_SECRET_KEY" in bad.stderr and "must be 32" in bad.stderr
    assert short not in bad.stderr and "Traceback" not in bad.stderr
    garbage = _cli("server", "--home", str(tmp_path / "h3"), "--port", "1", cwd=tmp_path,
                   env={"CONVEYOR_SECRET_KEY": "not base64!"})  # fmt: skip
    assert garbage.returncode == 2 and "not valid base64" in garbage.stderr
    assert "not base64!" not in garbage.stderr
