"""/api/v1/config: configuration as code (apply, diff, export, history) and job
rollback. See docs/config-as-code.md."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, model_validator

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.controller.config_apply import ConfigApplier, apply_env
from conveyor.controller.config_sync import read_repo_files
from conveyor.controller.job_edits import rollback_job
from conveyor.core.permissions import Permission
from conveyor.errors import InvalidInput
from conveyor.git import Credential, GitError
from conveyor.store.scm import get_heads, get_poll, version_commits

router = APIRouter(prefix="/api/v1", tags=["config"])

MAX_FILES = 10_000


class ApplyIn(BaseModel):
    """Either ``files`` (path -> text, read by the CLI from a folder) or ``repo`` (+
    ``ref``), which the controller fetches itself."""

    files: dict[str, str] | None = None
    repo: str | None = None
    ref: str = "main"
    credential: Annotated[str | None, Field(max_length=200)] = None  # for ``repo``: an id
    source: Annotated[str | None, Field(max_length=2000)] = None  # where files came from
    commit: Annotated[str | None, Field(max_length=64)] = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ApplyIn:
        if (self.files is None) == (self.repo is None):
            raise ValueError("send either 'files' or 'repo'")
        if self.files is not None and len(self.files) > MAX_FILES:
            raise ValueError(f"at most {MAX_FILES} files")
        return self


class RollbackIn(BaseModel):
    to: Annotated[int, Field(ge=1)]


def _applier(runtime: Any) -> ConfigApplier:
    return ConfigApplier(
        runtime.store, runtime.clock, apply_env(runtime.settings, runtime.notifier.config)
    )


@router.post("/config/apply")
async def apply_config(body: ApplyIn, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Validate everything, then apply all of it in one transaction (``dry_run``: only
    say what would change). 400 with every ``file:line: message`` if anything is invalid."""
    commit: str | None
    if body.repo is not None:
        auth: Credential = body.credential
        if runtime.scm is not None:  # from the credentials store; 400 if unavailable
            auth = await runtime.scm.auth_for(body.repo, body.credential)
        try:
            files, commit = await read_repo_files(
                runtime.settings.home.resolve() / "mirrors", body.repo, body.ref, auth
            )
        except GitError as exc:
            # The caller named the repository: one it cannot read is bad input (4xx).
            raise InvalidInput(f"cannot read the config repository {body.repo}: {exc}") from None
        source = body.repo
    else:
        assert body.files is not None
        files, commit = body.files, body.commit
        source = body.source or "api"
    if not source.strip():
        raise InvalidInput("source must not be empty")
    result = await _applier(runtime).apply(files, source, commit, caller.name, body.dry_run)
    return {
        "applied": result.applied,
        "apply_id": result.apply_id,
        "source": source,
        "commit": result.commit,
        "changes": [
            {"kind": c.kind, "name": c.name, "action": c.action, "file": c.file}
            for c in result.changes
        ],
    }


@router.get("/config/export")
async def export_config(runtime: RuntimeDep, _: CallerDep) -> dict[str, Any]:
    return {"files": await _applier(runtime).export()}


@router.get("/config/instance")
async def config_instance(runtime: RuntimeDep, _: CallerDep) -> dict[str, Any]:
    """The instance schedules in effect (retention defaults, backup schedules): each
    field's value and its source, the config repository or the controller settings."""
    from conveyor.controller.config_kinds import effective_instance

    return await effective_instance(runtime.store, runtime.settings)


@router.get("/config/applies")
async def config_applies(
    runtime: RuntimeDep, _: CallerDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    return await _applier(runtime).history(limit)


@router.get("/jobs/{name:path}/commits")
async def job_version_commits(name: str, runtime: RuntimeDep, _: CallerDep) -> dict[str, Any]:
    """The config commit (and file) each version of a job came from, by version."""
    await runtime.store.get_job(name)
    return {str(v): c for v, c in sorted((await version_commits(runtime.store, name)).items())}


@router.get("/jobs/{name:path}/scm-heads")
async def scm_heads(name: str, runtime: RuntimeDep, _: CallerDep) -> dict[str, str]:
    """The last commit the leader saw (polling, webhooks) per branch of a job."""
    await runtime.store.get_job(name)
    return await get_heads(runtime.store, name)


@router.get("/jobs/{name:path}/scm-poll")
async def scm_poll(name: str, runtime: RuntimeDep, _: CallerDep) -> dict[str, Any]:
    """The last poll of a job's repository by the leader: when, and its error if it
    failed (a missing credential, an unreachable repository); ``{}`` if never polled."""
    await runtime.store.get_job(name)
    status = await get_poll(runtime.store, name)
    if status is None:
        return {}
    return {
        "polled_at": status.polled_at.isoformat(),
        "succeeded_at": status.succeeded_at.isoformat() if status.succeeded_at else None,
        "error": status.error,
    }


@router.post("/jobs/{name:path}/rollback")
async def rollback(
    name: str, body: RollbackIn, runtime: RuntimeDep, caller: CallerDep, force: bool = False
) -> dict[str, Any]:
    """Make an earlier version's spec current again, as a new version."""
    from conveyor.controller.job_edits import guard_managed_edit

    await guard_managed_edit(
        runtime.store, name, caller.name, caller.can(Permission.CONFIG_MANAGE), force, "rollback"
    )
    version, changed = await rollback_job(
        runtime.store, name, body.to, caller.name, runtime.clock()
    )
    return {"job": name, "version": version, "changed": changed, "restored": body.to}
