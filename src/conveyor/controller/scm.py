"""Builds of jobs with a repository: resolve the commit, read the pipeline from the
repository when the job keeps it there, plan, and record what was built.

The controller keeps its own bare mirror cache (``HOME/mirrors``) to resolve a branch
to its commit and read the commit's author, message and pipeline file; the agent then
checks out that exact commit from its own mirror (``conveyor.agent.checkout``). So a
build always builds the commit it names, even if the branch moves while it is queued.

The job's ``scm.credential`` is resolved here from the encrypted credentials store
(:meth:`ScmBuilds.auth`) for every git command the controller runs; an id the store
does not have falls back to the deprecated ``CONVEYOR_SCM_CREDENTIAL_<ID>``
environment variables. The agent gets the value with the build's start answer
(``conveyor.api.agent_protocol``), like the credentials a step binds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from conveyor import git
from conveyor.controller.clock import Clock
from conveyor.controller.wakeups import DISPATCH, Wakeups
from conveyor.core.jenkinsfile import NotTranslated, is_jenkinsfile_path, pipeline_from_jenkinsfile
from conveyor.core.pipeline import ParameterError, Pipeline, SpecError, parse_pipeline, plan_build
from conveyor.core.plan import CheckoutPlan
from conveyor.core.scm import ScmSpec
from conveyor.credentials.keys import DecryptError
from conveyor.credentials.service import CredentialsNotConfigured, CredentialVault
from conveyor.errors import Conflict, ConveyorError, InvalidInput
from conveyor.store import Store
from conveyor.store.credentials import get_credentials
from conveyor.store.records import BuildRecord, JobRecord
from conveyor.store.scm import BuildCommit, get_heads, get_job_meta, record_build_commit
from conveyor.store.store import NewBuild

log = structlog.get_logger(__name__)


class RepositoryUnavailable(ConveyorError):
    """The job's repository could not be fetched (or the commit/file is missing)."""

    status = 502
    title = "Repository unavailable"


class ScmCredentialUnavailable(ConveyorError):
    """The job's ``scm.credential`` cannot be resolved (not stored, not decryptable,
    or of a kind git cannot use). Not an :class:`InvalidInput`: a trigger claim is
    released, so the firing is tried again once the credential is there."""

    status = 400
    title = "SCM credential unavailable"


class ScmBuilds:
    def __init__(
        self,
        store: Store,
        wakeups: Wakeups,
        clock: Clock,
        mirror_root: Path,
        vault: CredentialVault | None = None,
    ) -> None:
        self.store = store
        self.wakeups = wakeups
        self.clock = clock
        self.mirror_root = mirror_root
        self.vault = vault

    async def auth(self, spec: ScmSpec) -> git.Credential:
        """The job's repository credential, resolved (see :meth:`auth_for`)."""
        return await self.auth_for(spec.git, spec.credential)

    async def auth_for(self, url: str, cred_id: str | None) -> git.Credential:
        """A repository credential, resolved: from the credentials store, else
        (deprecated) the id itself for the ``CONVEYOR_SCM_CREDENTIAL_<ID>`` variables."""
        if cred_id is None:
            return None
        record = (await get_credentials(self.store, [cred_id])).get(cred_id)
        if record is None:
            if git.has_env_credential(cred_id):
                log.warning(
                    "scm.credential_from_environment",
                    credential=cred_id,
                    variable=git.env_name(cred_id),
                    hint="deprecated: store it with `conveyor credentials add`",
                )
                return cred_id
            raise ScmCredentialUnavailable(
                f"credential {cred_id!r} for {url} is not in the credentials store "
                f"(and {git.env_name(cred_id)} is not set): add it with "
                f"`conveyor credentials add {cred_id}`"
            )
        try:
            if self.vault is None:
                raise CredentialsNotConfigured("no credentials store on this controller")
            fields = {"kind": record.kind, **self.vault.open(record)}
            return git.auth_from_fields(cred_id, fields)
        except (CredentialsNotConfigured, DecryptError, ValueError) as exc:
            raise ScmCredentialUnavailable(
                f"credential {cred_id!r} for {url} cannot be used: {exc}"
            ) from None

    async def ls_remote(self, spec: ScmSpec) -> dict[str, str]:
        """Every ref of the job's repository (``git ls-remote`` with its credential)."""
        return await git.ls_remote(spec.git, await self.auth(spec))

    async def fetch(self, spec: ScmSpec) -> Path:
        auth = await self.auth(spec)
        try:
            return await git.mirror(self.mirror_root, spec.git, auth)
        except git.GitError as exc:
            raise RepositoryUnavailable(f"{spec.git}: {exc}") from None

    async def trigger(
        self,
        job: JobRecord,
        pipeline: Pipeline,
        parameters: Mapping[str, str | bool | int | None],
        trigger: str,
        priority: int | None = None,
        branch: str | None = None,
        sha: str | None = None,
    ) -> BuildRecord:
        """Queue a build of ``sha`` (default: the branch's current commit; for a pull
        request job the request's last head commit; for a tag job the tagged commit)."""
        from conveyor.controller.builds import plan_steps

        spec = pipeline.scm
        assert spec is not None
        meta = await get_job_meta(self.store, job.name)
        kind = meta.sub_kind if meta is not None and meta.parent is not None else None
        if meta is not None and meta.archived:
            gone = {"pr": "its pull request was closed", "tag": "its tag was deleted"}
            why = gone.get(kind or "", "its branch was deleted")
            raise Conflict(f"job {job.name!r} is archived ({why})")
        if branch is None:
            branch = meta.branch if meta is not None and meta.branch else None
        ref: str | None = None  # default: the branch
        extra: dict[str, str] = {}
        if kind == "pr" and meta is not None:
            extra = {
                "CHANGE_ID": meta.change_id or "",
                "CHANGE_BRANCH": meta.branch or "",
                "CHANGE_TARGET": meta.change_target or "",
            }
            if sha is None:  # a request's head may live in a fork: rebuild the last one seen
                sha = (await get_heads(self.store, job.name)).get(meta.branch or "")
                if sha is None:
                    raise Conflict(f"job {job.name!r}: no head commit of this request is known")
        elif kind == "tag" and branch is not None:
            ref = f"refs/tags/{branch}"
            extra = {"TAG_NAME": branch}
        if branch is None:
            if spec.multibranch:
                raise InvalidInput(
                    f"job {job.name!r} builds the branches matching {spec.branches!r}: "
                    f"start a build of one of its branch jobs ({job.name}/BRANCH)"
                )
            branch = spec.default_branch
        mirror = await self.fetch(spec)
        try:
            sha = await git.resolve(mirror, sha or ref or f"refs/heads/{branch}")
            info = await git.commit_info(mirror, sha)
        except git.GitError as exc:
            raise RepositoryUnavailable(f"{spec.git}: branch {branch!r}: {exc}") from None
        source = pipeline
        if pipeline.from_scm:
            try:
                text = await git.read_file(mirror, sha, spec.path)
            except git.GitError as exc:
                raise RepositoryUnavailable(str(exc)) from None
            if is_jenkinsfile_path(spec.path):
                # A Jenkinsfile (a job moved from Jenkins): translated by the importer;
                # one it cannot translate completely is refused with its report.
                try:
                    text = pipeline_from_jenkinsfile(text, job.name, f"{spec.path}@{sha[:12]}")
                except NotTranslated as exc:
                    raise InvalidInput(
                        f"the Jenkinsfile in {spec.git} at {sha[:12]} does not translate",
                        errors=exc.errors,
                    ) from None
            try:
                source = parse_pipeline(text, f"{spec.path}@{sha[:12]}")
            except SpecError as exc:
                raise InvalidInput(
                    f"the pipeline in {spec.git} at {sha[:12]} is invalid",
                    errors=[str(e) for e in exc.errors],
                ) from None
        try:
            plan = plan_build(source, parameters)
        except ParameterError as exc:
            raise InvalidInput(str(exc), errors=list(exc.errors)) from exc
        plan.checkout = CheckoutPlan(
            url=spec.git,
            commit=sha,
            branch=branch,
            credential=spec.credential,
            author=info.author,
            subject=info.subject,
        )
        # Jenkins' names, for scripts that already read them.
        plan.environment.update(GIT_COMMIT=sha, GIT_BRANCH=branch, GIT_URL=spec.git, **extra)
        build = await self.store.create_build(
            NewBuild(
                job_name=job.name,
                parameters={k: v for k, v in plan.environment.items() if source.parameter(k)},
                plan=plan.model_dump(mode="json"),
                steps=plan_steps(plan),
                priority=job.priority if priority is None else priority,
                label_expression=source.agent or pipeline.agent,
                trigger=trigger,
                max_attempts=1 + (source.retry or 0),
                lost_retries=source.retry_lost,
                expected_spec_version=job.version,
            ),
            self.clock(),
        )
        await record_build_commit(
            self.store,
            BuildCommit(
                build_id=build.id,
                repository=spec.git,
                branch=branch,
                sha=sha,
                author=info.author,
                email=info.email,
                message=info.message,
                committed_at=info.committed_at,
            ),
        )
        self.wakeups.notify(DISPATCH)
        log.info("build.queued", build_id=build.id, job=job.name, commit=sha[:12], branch=branch)
        return build
