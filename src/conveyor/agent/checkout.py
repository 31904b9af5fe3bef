"""The agent's checkout of a build's commit: update the per-agent bare mirror of the
repository (``WORKDIR/mirrors/<hash>``), then a shallow checkout of exactly that
commit into the workspace. Progress and errors go to the build log.

The repository's credential (``plan.credential``, an id) arrives resolved with the
build's start answer, like the credentials steps bind (and is masked in the log the
same way). It reaches git only through git's environment (``conveyor.git``): never
the URL, the command line or a ``.git/config``. An id the controller did not have
falls back to the deprecated ``CONVEYOR_SCM_CREDENTIAL_<ID>`` variables of the
agent's own environment."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from conveyor import git
from conveyor.core.plan import CheckoutPlan

BOLD, RED, RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


class CheckoutFailed(Exception):
    """Why the checkout failed (the build's failure cause)."""


def checkout_auth(plan: CheckoutPlan, resolved: dict[str, dict[str, str]]) -> git.Credential:
    """The credential to fetch ``plan.url`` with, from what the controller sent."""
    cred_id = plan.credential
    if cred_id is None:
        return None
    fields = resolved.get(cred_id)
    if fields is not None and "error" not in fields:
        try:
            return git.auth_from_fields(cred_id, fields)
        except git.CredentialKindError as exc:
            raise CheckoutFailed(str(exc)) from None
    if git.has_env_credential(cred_id):  # deprecated: the agent's own environment
        return cred_id
    why = fields["error"] if fields is not None else f"credential {cred_id!r} was not sent"
    raise CheckoutFailed(
        f"{why}; the repository {plan.url} needs it (store it with "
        f"`conveyor credentials add {cred_id}`)"
    )


async def checkout(
    plan: CheckoutPlan,
    workspace: Path,
    mirror_root: Path,
    log_line: Callable[[str], Awaitable[None]],
    credentials: dict[str, dict[str, str]] | None = None,
) -> str | None:
    """Check ``plan.commit`` out into the workspace; ``None`` when done, else why not."""
    where = f" ({plan.branch})" if plan.branch else ""
    await log_line(f"{BOLD}==> checkout {plan.url}{where} at {plan.commit[:12]}{RESET}")
    started = time.monotonic()
    try:
        auth = checkout_auth(plan, credentials or {})
        mirror = await git.mirror(mirror_root, plan.url, auth)
        await git.shallow_checkout(mirror, plan.url, plan.commit, workspace)
        head = (await git.run_git("rev-parse", "HEAD", cwd=workspace)).strip()
    except (git.GitError, CheckoutFailed) as exc:
        await log_line(f"{RED}==> checkout failed: {exc}{RESET}")
        return f"checkout failed: {exc}"
    if head != plan.commit:
        why = f"checkout failed: got {head}, expected {plan.commit}"
        await log_line(f"{RED}==> {why}{RESET}")
        return why
    subject = f": {plan.subject}" if plan.subject else ""
    await log_line(f"==> at {head[:12]}{subject} ({time.monotonic() - started:.1f}s)")
    return None
