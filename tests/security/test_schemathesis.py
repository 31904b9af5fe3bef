"""schemathesis against the real OpenAPI document of a real controller process,
authenticated as an admin: no 5xx, and no response that breaks its schema.

Bounded for CI: a few examples per operation (``EXAMPLES``), no shrinking database.
Left out (and why): revoking tokens and disabling users would lock the fuzzer out of
the rest of the run; the live log stream of a running build never ends by design."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.harness import Controller

EXAMPLES = 10
LEFT_OUT = {
    ("DELETE", "/api/v1/tokens/{token_id}"),
    ("POST", "/api/v1/users/{name}/disable"),
    ("PUT", "/api/v1/users/{name}/password"),
    ("GET", "/api/v1/builds/{build_id}/log/stream"),
}
SPEC = "name: fuzz/job\nstages:\n  - name: a\n    steps:\n      - echo: hi\n"


def _fuzz_token(controller: Controller) -> str:
    with controller.client() as c:
        assert c.post("/api/v1/users", json={"name": "fuzz", "role": "admin"}).status_code == 201
        r = c.post("/api/v1/tokens", json={"name": "fuzz", "user": "fuzz", "scope": "admin"})
        assert r.status_code == 201, r.text
        assert c.post("/api/v1/jobs", json={"spec": SPEC}).status_code == 201
        assert c.post("/api/v1/jobs/fuzz/job/builds", json={}).status_code == 201
        return str(r.json()["token"])


def test_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "controller").start()
    try:
        token = _fuzz_token(controller)
        headers = {"Authorization": f"Bearer {token}"}
        schema = schemathesis.openapi.from_url(f"{controller.url}/openapi.json")
        failures: list[str] = []
        operations = 0
        started = time.monotonic()
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in LEFT_OUT:
                continue
            operations += 1

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=controller.url, headers=headers, timeout=60)
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )

            try:
                check()
            except Exception as exc:
                failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
        elapsed = time.monotonic() - started
        print(f"schemathesis: {operations} operations x {EXAMPLES} examples in {elapsed:.0f}s")
        assert operations > 40
        assert not failures, "\n\n".join(failures)
        # The fuzzer was an admin all along (nothing locked it out).
        r = httpx.get(f"{controller.url}/api/v1/whoami", headers=headers)
        assert r.status_code == 200
    finally:
        controller.stop()
