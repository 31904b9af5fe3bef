"""`conveyor credentials add|list|rm` against a real controller: values from --value,
--from-file and standard input are stored exactly (checked by decrypting), never
printed; bad input is a message and exit status 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor.credentials.keys import SecretKey, create_key_file, load_key_file
from conveyor.credentials.service import CredentialVault
from conveyor.store import open_store
from tests.harness import Controller

SECRET = "cli-s3cret-value"


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    key_file = tmp_path / "secret.key"
    create_key_file(key_file)
    c = Controller(tmp_path / "home", extra_args=["--secret-key-file", str(key_file)]).start()
    c.key_file = key_file  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.stop()


def cli(
    controller: Controller, *args: str, stdin: str | bytes = ""
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CONVEYOR_URL": controller.url,
        "CONVEYOR_TOKEN": controller.token,
        "PYTHONPATH": str(Path(conveyor.__file__).resolve().parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "credentials", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        env=env,
        cwd=controller.home,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def stored(controller: Controller, *ids: str) -> dict[str, dict[str, str]]:
    """Decrypt what the controller stored (as an agent would get it)."""
    key = SecretKey(load_key_file(controller.key_file))  # type: ignore[attr-defined]
    plan = {
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
                        "credentials": [{"id": i, "env": "X"} for i in ids],
                    }
                ],
            }
        ]
    }

    async def resolve() -> dict[str, dict[str, str]]:
        store = open_store(f"sqlite:///{controller.home / 'conveyor.db'}")
        try:
            return await CredentialVault(store, key).resolve(plan)
        finally:
            await store.close()

    return asyncio.run(resolve())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_add_list_rm_from_every_source(controller: Controller, tmp_path: Path) -> None:
    ok(cli(controller, "add", "team-a/token", "--value", SECRET, "--description", "ci token"))
    ok(cli(controller, "add", "team-a/stdin", stdin=SECRET + "\n"))
    ok(cli(controller, "add", "team-a/login", "--kind", "username_password",
           "--username", "deployer", stdin=SECRET + "\n"))  # fmt: skip
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("-----BEGIN KEY-----\nAAAA" + SECRET + "\n-----END KEY-----\n")
    ok(cli(controller, "add", "team-a/ssh", "--kind", "ssh_key", "--from-file", str(key_file)))
    listing = ok(cli(controller, "list"))
    for name in ("team-a/token", "team-a/stdin", "team-a/login", "team-a/ssh", "ci token"):
        assert name in listing
    values = stored(controller, "team-a/token", "team-a/stdin", "team-a/login", "team-a/ssh")
    assert values["team-a/token"] == {"kind": "text", "value": SECRET}
    assert values["team-a/stdin"] == {"kind": "text", "value": SECRET}  # one newline dropped
    assert values["team-a/login"] == {
        "kind": "username_password", "username": "deployer", "password": SECRET
    }  # fmt: skip
    assert values["team-a/ssh"]["value"] == key_file.read_text()  # byte for byte

    ok(cli(controller, "add", "team-a/token", "--replace", stdin="new-value"))
    assert stored(controller, "team-a/token")["team-a/token"]["value"] == "new-value"
    ok(cli(controller, "rm", "team-a/token", "--yes"))
    assert "team-a/token" not in ok(cli(controller, "list", "--prefix", "team-a/"))


def test_bad_input_is_a_message_and_exit_2(controller: Controller, tmp_path: Path) -> None:
    some_file = tmp_path / "value.txt"
    some_file.write_text(SECRET)
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00secret")
    refused(cli(controller, "add", "x", "--value", SECRET, "--from-file", str(some_file)),
            "not both")  # fmt: skip
    refused(cli(controller, "add", "x", "--from-file", str(tmp_path / "missing")), "cannot read")
    refused(cli(controller, "add", "x", "--from-file", str(binary)), "not UTF-8")
    refused(cli(controller, "add", "x", "--kind", "pgp", "--value", SECRET), "unknown kind")
    refused(cli(controller, "add", "x", "--kind", "username_password", stdin=SECRET),
            "needs --username")  # fmt: skip
    refused(cli(controller, "add", "x", "--username", "u", "--value", SECRET),
            "only for username_password")  # fmt: skip
    refused(cli(controller, "add", "x", stdin=""), "the value is empty")
    refused(cli(controller, "add", "../up", "--value", SECRET), "invalid credential id")
    refused(cli(controller, "add", "x", "--value", "a" * 70_000), "value")
    refused(cli(controller, "rm", "nope", "--yes"), "no credential 'nope'")
    refused(cli(controller, "add", "nope", "--replace", "--value", SECRET), "no credential")
    ok(cli(controller, "add", "x", "--value", SECRET))
    refused(cli(controller, "add", "x", "--value", "other"), "exists")
    assert stored(controller, "x")["x"]["value"] == SECRET  # the refused add changed nothing
    listing = ok(cli(controller, "list"))
    assert "nope" not in listing and "../up" not in listing


def test_hidden_prompt_on_a_terminal(controller: Controller) -> None:
    """On a terminal (a real pseudo-terminal), the value is asked twice, not echoed."""
    import pty
    import select
    import time

    env = {
        **os.environ,
        "CONVEYOR_URL": controller.url,
        "CONVEYOR_TOKEN": controller.token,
        "PYTHONPATH": str(Path(conveyor.__file__).resolve().parents[1]),
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal
        os.execvpe(
            sys.executable, [sys.executable, "-m", "conveyor", "credentials", "add", "tty"], env
        )
    seen = b""

    def read_until(needle: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while needle not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(fd, 1024)
                except OSError:
                    return

    try:
        read_until(b"Secret value")
        time.sleep(1)  # the prompt turns echo off (flushing input) after printing itself
        os.write(fd, SECRET.encode() + b"\n")
        read_until(b"Repeat for confirmation")
        time.sleep(1)
        os.write(fd, SECRET.encode() + b"\n")
        read_until(b"stored credential")
    finally:
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
            time.sleep(0.1)
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    assert status == 0, seen
    assert b"stored credential" in seen and SECRET.encode() not in seen
    assert stored(controller, "tty")["tty"]["value"] == SECRET
