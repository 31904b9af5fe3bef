"""The credentials API on SQLite and PostgreSQL: values go in and never come out,
bad input is a 4xx problem with nothing stored, and builds binding unknown ids are
refused at trigger time, naming them."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select

from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.credentials import credentials, get_credential
from tests.conftest import FakeClock
from tests.credentials.conftest import _runtime

SECRET = "s3cr3t-Value-42"


async def _create(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/api/v1/credentials", json=body)


def _problem(r: httpx.Response, status: int, needle: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    assert needle in str(body["detail"]), body
    return body


async def test_create_list_show_never_return_the_value(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    r = await _create(client, id="team-a/deploy-key", kind="text", value=SECRET, description="d")
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == "/api/v1/credentials/team-a/deploy-key"
    created = r.json()
    assert set(created) == {
        "id", "kind", "description", "key_id", "created_at", "updated_at", "created_by"
    }  # fmt: skip
    assert created["key_id"] == runtime.credentials.key.key_id  # type: ignore[union-attr]
    r = await _create(
        client, id="team-b/registry", kind="username_password", username="bot", password=SECRET
    )
    assert r.status_code == 201, r.text
    listed = await client.get("/api/v1/credentials")
    assert [c["id"] for c in listed.json()] == ["team-a/deploy-key", "team-b/registry"]
    only_a = await client.get("/api/v1/credentials", params={"prefix": "team-a/"})
    assert [c["id"] for c in only_a.json()] == ["team-a/deploy-key"]
    shown = await client.get("/api/v1/credentials/team-a/deploy-key")
    assert shown.status_code == 200 and shown.json()["description"] == "d"
    for response in (r, listed, only_a, shown):
        assert SECRET not in response.text and "bot" not in response.text
    # At rest: ciphertext only.
    async with runtime.store.read() as conn:
        rows = (await conn.execute(select(credentials))).all()
    assert len(rows) == 2
    for row in rows:
        assert SECRET not in str(tuple(row)) and "bot" not in row.secret
    # The vault gives the values back, for an agent only.
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
                        "credentials": [
                            {"id": "team-a/deploy-key", "env": "K"},
                            {"id": "team-b/registry", "password_env": "P"},
                            {"id": "gone", "env": "G"},
                        ],
                    }
                ],
            }
        ]
    }
    resolved = await runtime.credentials.resolve(plan)  # type: ignore[union-attr]
    assert resolved["team-a/deploy-key"] == {"kind": "text", "value": SECRET}
    assert resolved["team-b/registry"] == {
        "kind": "username_password", "username": "bot", "password": SECRET
    }  # fmt: skip
    assert "does not exist" in resolved["gone"]["error"]


async def test_replace_and_delete(client: httpx.AsyncClient, runtime: Runtime) -> None:
    assert (await _create(client, id="k", value="first-value")).status_code == 201
    before = await get_credential(runtime.store, "k")
    r = await client.put("/api/v1/credentials/k", json={"value": "second-value"})
    assert r.status_code == 200 and "second-value" not in r.text
    after = await get_credential(runtime.store, "k")
    assert before is not None and after is not None and after.secret != before.secret
    assert after.description is None and after.kind == "text"
    vault = runtime.credentials
    assert vault is not None and vault.open(after) == {"value": "second-value"}
    _problem(await client.put("/api/v1/credentials/nope", json={"value": "x"}), 404, "nope")
    assert (await client.delete("/api/v1/credentials/k")).status_code == 204
    _problem(await client.get("/api/v1/credentials/k"), 404, "no credential 'k'")
    _problem(await client.delete("/api/v1/credentials/k"), 404, "no credential 'k'")


async def test_bad_input_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    _problem(await _create(client, id="../etc", value=SECRET), 400, "invalid credential id")
    _problem(await _create(client, id="a//b", value=SECRET), 400, "invalid credential id")
    _problem(await _create(client, id="x", kind="pgp", value=SECRET), 400, "kind")
    _problem(await _create(client, id="x", value=""), 400, "value: must not be empty")
    _problem(await _create(client, id="x"), 400, "needs a value")
    _problem(await _create(client, id="x", kind="username_password", username="u"), 400, "password")
    _problem(
        await _create(client, id="x", value=SECRET, username="u"), 400, "not username/password"
    )
    _problem(await _create(client, id="x", value="a" * 70_000), 400, "value")
    r = await client.post("/api/v1/credentials", content=b"{not json", headers={
        "content-type": "application/json"
    })  # fmt: skip
    _problem(r, 400, "not valid JSON")
    _problem(await _create(client, id="y", value=SECRET, description="a\0b"), 400, "NUL")
    _problem(await _create(client, id="y", value="a\0b"), 400, "NUL")
    r = await client.post(
        "/api/v1/credentials",
        content=b'{"id": "y", "value": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    _problem(r, 400, "value: ")
    _problem(await client.get("/api/v1/credentials/a%00b"), 400, "NUL")
    _problem(await client.put("/api/v1/credentials/a%00b", json={"value": "v"}), 400, "NUL")
    _problem(await client.delete("/api/v1/credentials/a%00b"), 400, "NUL")
    _problem(await client.get("/api/v1/credentials", params={"prefix": "\0"}), 400, "NUL")
    for r in [await _create(client, id="x", value=SECRET)]:
        assert r.status_code == 201
    body = _problem(await _create(client, id="x", value="other"), 409, "exists")
    assert SECRET not in str(body)
    assert [c["id"] for c in (await client.get("/api/v1/credentials")).json()] == ["x"]
    anon = httpx.AsyncClient(transport=client._transport, base_url="http://conveyor.test")
    async with anon:
        assert (await anon.get("/api/v1/credentials")).status_code == 401
        assert (
            await anon.post("/api/v1/credentials", json={"id": "y", "value": "v"})
        ).status_code == 401


async def test_unknown_or_misbound_ids_are_refused_at_trigger(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    spec = """
name: deploy
credentials: [{id: team-a/token, env: TOKEN}]
stages:
  - name: go
    credentials: [{id: team-a/login, username_env: U, password_env: P}]
    steps:
      - sh: echo hi
        credentials: [{id: team-a/missing, file: KEY_PATH}]
"""
    assert (await client.post("/api/v1/jobs", json={"spec": spec})).status_code == 201
    body = _problem(await client.post("/api/v1/jobs/deploy/builds", json={}), 400, "unknown")
    assert body["errors"] == [
        "unknown credential 'team-a/token'",
        "unknown credential 'team-a/login'",
        "unknown credential 'team-a/missing'",
    ]
    await _create(client, id="team-a/token", value="t0ken-value")
    await _create(client, id="team-a/login", value="not-a-login")  # a text credential
    await _create(client, id="team-a/missing", kind="ssh_key", value="KEY\nDATA\n")
    body = _problem(await client.post("/api/v1/jobs/deploy/builds", json={}), 400, "login")
    assert body["errors"] == [
        "credential 'team-a/login' is a text credential: bind it with env or file,"
        " not username_env/password_env"
    ]
    assert (await client.get("/api/v1/builds")).json()["items"] == []
    await client.put(
        "/api/v1/credentials/team-a/login",
        json={"kind": "username_password", "username": "u", "password": "p4ssword"},
    )
    r = await client.post("/api/v1/jobs/deploy/builds", json={})
    assert r.status_code == 201, r.text
    # The stored plan has ids and variable names only.
    build = await runtime.store.get_build(r.json()["id"])
    assert "t0ken-value" not in str(build.plan) and "p4ssword" not in str(build.plan)
    assert build.plan["stages"][0]["steps"][0]["credentials"] == [
        {"id": "team-a/token", "env": "TOKEN", "username_env": None, "password_env": None,
         "file": None},
        {"id": "team-a/login", "env": None, "username_env": "U", "password_env": "P",
         "file": None},
        {"id": "team-a/missing", "env": None, "username_env": None, "password_env": None,
         "file": "KEY_PATH"},
    ]  # fmt: skip


async def test_without_a_key_create_is_refused_and_listing_works(
    database_url: str, tmp_path: Path, clock: FakeClock
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
            r = await c.post("/api/v1/credentials", json={"id": "k", "value": SECRET})
            body = _problem(r, 409, "CONVEYOR_SECRET_KEY")
            assert SECRET not in str(body)
            assert (await c.get("/api/v1/credentials")).json() == []
    finally:
        await rt.stop()
