"""Provider secrets are never stored in clear (SQLite and PostgreSQL, in process,
with a credentials key): an inline token or env secret is sealed with the key; a
``*_credential`` or ``{credential: ID}`` reference stores only the id; the API shows
``***``; the secret's bytes are in no table, not in the SQLite file, not in a pg_dump;
the autoscaler hands the provider the value in clear (in memory only). Without a key
an inline secret is refused, and bad input stores nothing."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conveyor.controller.autoscaler import Autoscaler
from conveyor.controller.leader import LeaderLease
from conveyor.credentials.keys import SecretKey
from conveyor.credentials.rotation import RotationError, rotate_store
from conveyor.credentials.service import CredentialVault
from conveyor.providers.command import CommandProvider
from conveyor.providers.docker import DockerProvider
from conveyor.providers.kubernetes import KubernetesProvider
from conveyor.providers.secrets import (
    SEALED,
    ProviderSecretError,
    looks_secret,
    placeholders,
    redacted,
    resolve_config,
    seal_config,
)
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.pools import get_pool, list_pools, pools, update_pool
from tests.conftest import FakeClock
from tests.credentials.conftest import _runtime, new_key_text

TOKEN = "kube-token-" + secrets.token_hex(12)
ENV_SECRET = "env-pass-" + secrets.token_hex(12)
REF_TOKEN = "ref-token-" + secrets.token_hex(12)
FORBIDDEN = [TOKEN, ENV_SECRET, REF_TOKEN]


def kube_pool(name: str, **config: object) -> dict[str, object]:
    return {
        "name": name,
        "labels": ["k"],
        "min": 0,
        "max": 2,
        "provider": "kubernetes",
        "provider_config": {"api_url": "http://127.0.0.1:9", "image": "agent:1", **config},
    }


async def _scan_database(runtime: Runtime, database_url: str) -> None:
    """Every pool row, the SQLite file bytes (with its WAL), or a pg_dump."""
    async with runtime.store.read() as conn:
        rows = (await conn.execute(select(pools))).all()
    assert rows
    for row in rows:
        for secret in FORBIDDEN:
            assert secret not in repr(row), f"a secret in clear in pools row {row.name}"
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert files
        for file in files:
            data = file.read_bytes()
            for secret in FORBIDDEN:
                assert secret.encode() not in data, f"a secret in clear in {file.name}"
    else:
        done = await asyncio.to_thread(
            subprocess.run,
            ["pg_dump", "--data-only", "--no-owner", database_url],
            capture_output=True,
            check=True,
            timeout=60,
        )
        dump = done.stdout
        assert b"scaling_decisions" in dump or b"pools" in dump
        for secret in FORBIDDEN:
            assert secret.encode() not in dump, "a secret in clear in the pg_dump"


async def _provider(runtime: Runtime, clock: FakeClock, name: str) -> object:
    scaler = Autoscaler(
        runtime.store,
        LeaderLease(runtime.store, "t", 5.0, clock),
        clock,
        controller_url="http://127.0.0.1:1",
        home=Path("."),
        credentials=runtime.credentials,
    )
    try:
        return await scaler.provider_for(await get_pool(runtime.store, name))
    finally:
        scaler.providers.clear()


async def test_inline_secrets_are_sealed_and_references_store_only_the_id(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, database_url: str
) -> None:
    r = await client.post(
        "/api/v1/credentials", json={"id": "ci/k8s-token", "kind": "text", "value": REF_TOKEN}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/pools", json=kube_pool("inline", token=TOKEN))
    assert r.status_code == 201, r.text
    assert r.json()["provider_config"]["token"] == "***"
    r = await client.post("/api/v1/pools", json=kube_pool("byref", token_credential="ci/k8s-token"))
    assert r.status_code == 201, r.text
    assert r.json()["provider_config"]["token_credential"] == "ci/k8s-token"
    command = {
        "name": "cmd",
        "provider": "command",
        "provider_config": {
            "command": ["/bin/true"],
            "env": {
                "DB_PASSWORD": ENV_SECRET,
                "REGION": "eu-1",
                "API_TOKEN": {"credential": "ci/k8s-token"},
            },
            "config": {"aws": {"secret_access_key": TOKEN, "group": "ci"}},
        },
    }
    r = await client.post("/api/v1/pools", json=command)
    assert r.status_code == 201, r.text
    shown = r.json()["provider_config"]
    assert shown["env"] == {
        "DB_PASSWORD": "***",
        "REGION": "eu-1",
        "API_TOKEN": {"credential": "ci/k8s-token"},
    }
    assert shown["config"]["aws"] == {"secret_access_key": "***", "group": "ci"}

    # Stored: ciphertext bound to the pool and field, or the reference's id.
    stored = {p.name: p.provider_config for p in await list_pools(runtime.store)}
    assert set(stored["inline"]["token"]) == {SEALED, "key_id"}
    assert stored["byref"]["token_credential"] == "ci/k8s-token"
    assert (
        SEALED in stored["cmd"]["env"]["DB_PASSWORD"] and stored["cmd"]["env"]["REGION"] == "eu-1"
    )
    for path in ("/api/v1/pools", "/api/v1/pools/inline", "/ui/pools/inline", "/ui/pools/cmd"):
        text = (await client.get(path)).text
        assert not any(s in text for s in FORBIDDEN), path
        assert SEALED not in text, path
    await _scan_database(runtime, database_url)

    # The provider gets the values in clear, in memory.
    inline = await _provider(runtime, clock, "inline")
    assert isinstance(inline, KubernetesProvider) and inline.token == TOKEN
    byref = await _provider(runtime, clock, "byref")
    assert isinstance(byref, KubernetesProvider) and byref.token == REF_TOKEN
    cmd = await _provider(runtime, clock, "cmd")
    assert isinstance(cmd, CommandProvider)
    assert cmd.env == {"DB_PASSWORD": ENV_SECRET, "REGION": "eu-1", "API_TOKEN": REF_TOKEN}
    assert cmd.user_config["aws"]["secret_access_key"] == TOKEN

    # A nested reference: a docker engine's TLS client key from the credentials store.
    tls = {"client_cert": "CERT", "client_key_credential": "ci/k8s-token"}
    docker = {"name": "dock", "provider": "docker", "provider_config": {"image": "x", "tls": tls}}
    r = await client.post("/api/v1/pools", json=docker)
    assert r.status_code == 201, r.text
    assert r.json()["provider_config"]["tls"] == tls
    dock = await _provider(runtime, clock, "dock")
    assert isinstance(dock, DockerProvider)
    assert dock.tls == {"client_cert": "CERT", "client_key": REF_TOKEN}

    # A replaced credential reaches the provider at the next step (rebuilt).
    r = await client.put("/api/v1/credentials/ci/k8s-token", json={"value": REF_TOKEN + "-2"})
    assert r.status_code == 200, r.text
    byref = await _provider(runtime, clock, "byref")
    assert isinstance(byref, KubernetesProvider) and byref.token == REF_TOKEN + "-2"


async def test_patch_keeps_sealed_values_and_refuses_bad_secrets(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    assert (await client.post("/api/v1/pools", json=kube_pool("p", token=TOKEN))).status_code == 201
    before = (await get_pool(runtime.store, "p")).provider_config

    # Not touching provider_config keeps it; sending back what GET showed (***) too.
    assert (await client.patch("/api/v1/pools/p", json={"max": 3})).status_code == 200
    assert (await get_pool(runtime.store, "p")).provider_config == before
    shown = (await client.get("/api/v1/pools/p")).json()["provider_config"]
    r = await client.patch(
        "/api/v1/pools/p", json={"provider_config": {**shown, "namespace": "ci"}}
    )
    assert r.status_code == 200, r.text
    after = (await get_pool(runtime.store, "p")).provider_config
    assert after["token"] == before["token"] and after["namespace"] == "ci"
    provider = await _provider(runtime, clock, "p")
    assert isinstance(provider, KubernetesProvider) and provider.token == TOKEN

    for body, status, needle in [
        (kube_pool("q", token="***"), 400, "there is none"),
        (kube_pool("q", token={SEALED: "AAAA", "key_id": "x"}), 400, "Conveyor's own"),
        (kube_pool("q", token_credential="ci/nope"), 400, "unknown credential(s): ci/nope"),
        (kube_pool("q", token={"credential": ""}), 400, "a credential id"),
        (kube_pool("q", token="t", token_credential="ci/x"), 400, "give token or token_credential"),
    ]:
        r = await client.post("/api/v1/pools", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert needle in r.json()["detail"], r.text
    assert [p.name for p in await list_pools(runtime.store)] == ["p"]
    r = await client.patch(
        "/api/v1/pools/p",
        json={"provider_config": kube_pool("p", token_credential="ci/nope")["provider_config"]},
    )
    assert r.status_code == 400
    assert (await get_pool(runtime.store, "p")).provider_config == after


async def test_without_a_credentials_key_inline_secrets_are_refused(
    tmp_path: Path, database_url: str, clock: FakeClock
) -> None:
    from conveyor.api.app import create_app

    settings = Settings(home=tmp_path / "nokey", database_url=database_url)
    rt = await _runtime(settings, clock)
    try:
        app = create_app(rt, run_loops=False)
        headers = {"Authorization": f"Bearer {rt.first_admin_token}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as c:
            r = await c.post("/api/v1/pools", json=kube_pool("nokey", token=TOKEN))
            assert r.status_code == 409, r.text
            assert "CONVEYOR_SECRET_KEY" in r.json()["detail"]
            assert "token_credential" in r.json()["detail"]
            assert TOKEN not in r.text
            # A token file (a path, not a secret) needs no key.
            r = await c.post("/api/v1/pools", json=kube_pool("file", token_file="/run/sa/token"))
            assert r.status_code == 201, r.text
        assert [p.name for p in await list_pools(rt.store)] == ["file"]
    finally:
        await rt.stop()


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True), ("password", True), ("DB_PASSWORD", True), ("API_TOKEN", True),
        ("secret_access_key", True), ("tls_key", True), ("PGPASS", True), ("auth", True),
        ("token_file", False), ("token_credential", False), ("ca_file", False),
        ("api_url", False), ("image", False), ("namespace", False), ("REGION", False),
    ],
)  # fmt: skip
def test_which_field_names_are_secrets(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


async def test_seal_resolve_round_trip_is_bound_to_pool_and_field(runtime: Runtime) -> None:
    vault = runtime.credentials
    assert vault is not None
    config = {"token": TOKEN, "env": {"X_SECRET": ENV_SECRET}, "pod_template": {"token": "kept"}}
    sealed = seal_config(vault, "a", config)
    assert sealed["pod_template"] == {"token": "kept"}  # a manifest is stored as given
    assert await resolve_config(vault, "a", sealed) == config
    assert placeholders(sealed)["token"] == "***" and redacted(sealed)["env"]["X_SECRET"] == "***"
    # Copied onto another pool, or onto another field, it does not decrypt.
    with pytest.raises(ProviderSecretError, match="does not decrypt"):
        await resolve_config(vault, "b", sealed)
    moved = {**sealed, "password": sealed["token"]}
    with pytest.raises(ProviderSecretError, match="password does not decrypt"):
        await resolve_config(vault, "a", moved)


async def test_key_rotation_reseals_pool_secrets_in_the_same_transaction(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, key_text: str
) -> None:
    r = await client.post("/api/v1/pools", json=kube_pool("rot", token=TOKEN))
    assert r.status_code == 201, r.text
    old = SecretKey(base64.b64decode(key_text))
    new = SecretKey(base64.b64decode(new_key_text()))
    await rotate_store(runtime.store, old, new)
    stored = (await get_pool(runtime.store, "rot")).provider_config
    assert stored["token"]["key_id"] == new.key_id
    assert await resolve_config(CredentialVault(runtime.store, new), "rot", stored) == {
        "api_url": "http://127.0.0.1:9",
        "image": "agent:1",
        "token": TOKEN,
    }
    with pytest.raises(ProviderSecretError, match="encrypted with key"):
        await resolve_config(CredentialVault(runtime.store, old), "rot", stored)

    # A pool secret that no key opens stops the rotation: nothing changes, credentials
    # included.
    forged = {**stored, "token": {SEALED: stored["token"][SEALED], "key_id": "elsewhere"}}
    await update_pool(runtime.store, "rot", {"provider_config": forged}, clock())
    third = SecretKey(base64.b64decode(new_key_text()))
    with pytest.raises(RotationError, match=r"provider_config\.token is sealed with key elsewhere"):
        await rotate_store(runtime.store, new, third)
    assert (await get_pool(runtime.store, "rot")).provider_config == forged
