"""Runs one build's plan on an agent, with real subprocesses.

The executor is transport-agnostic: everything it reports goes through a
:class:`BuildReporter` (implemented by the agent's controller client).

Outcome rules, in short:

* stages run in order, steps of a stage in order, ``parallel`` children
  concurrently (no fail-fast: siblings of a failed child run to completion);
* the first failing stage ends the main phase; every step that never started is
  reported ``SKIPPED`` (``step_finished(key, SKIPPED, None, 0)``);
* then the post block for the outcome (``success`` / ``failure`` for FAILED and
  TIMED_OUT / ``cancelled``) runs, then ``always``; the steps of the other
  blocks are reported ``SKIPPED``;
* a failing post step stops the rest of its block and turns SUCCEEDED into
  FAILED; it never changes any other result;
* ``notify`` post steps are not the agent's: they are skipped silently (no log
  line, no step report); the controller runs and reports them after the build.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import posixpath
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from conveyor.agent.credentials import CredentialUnavailable, bind_credentials
from conveyor.agent.process import StepProcess
from conveyor.core.loglimit import truncation_line
from conveyor.core.plan import BuildPlan, PostCondition, StagePlan, StepPlan
from conveyor.core.states import BuildState, StepState

#: Timeout of a post step that has none of its own (seconds).
POST_STEP_TIMEOUT = 300.0
#: Variables taken from the agent's own environment; nothing else leaks into steps.
INHERITED_ENV = ("PATH", "HOME", "LANG", "USER")

BOLD, DIM, RED, YELLOW, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[0m"

_STEP_LEVEL = 1_000_000  # deadline level of a step's own timeout (build = 0, stages 1..)
_POST_ORDER: tuple[PostCondition, ...] = ("success", "failure", "cancelled", "always")
_POST_FOR: dict[BuildState, PostCondition] = {
    BuildState.SUCCEEDED: "success",
    BuildState.FAILED: "failure",
    BuildState.TIMED_OUT: "failure",
    BuildState.CANCELLED: "cancelled",
}
_SEVERITY = [StepState.SUCCEEDED, StepState.FAILED, StepState.TIMED_OUT, StepState.CANCELLED]


class BuildReporter(Protocol):
    async def log(self, data: bytes) -> None: ...

    async def step_started(self, key: str, attempt: int) -> None: ...

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None: ...

    async def upload_artifact(self, rel_path: str, file: Path) -> None: ...

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None: ...


@dataclass
class BuildContext:
    build_id: int
    plan: BuildPlan
    workspace: Path
    base_env: dict[str, str]
    kill_grace: float = 3.0
    post_timeout: float = POST_STEP_TIMEOUT
    #: Credential values of this build by id (from the start answer; never on disk).
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Where ``file`` credential bindings are written (outside the workspace).
    secrets_dir: Path | None = None
    mirror_root: Path | None = None  # the agent's git mirror cache (plan.checkout)


@dataclass(frozen=True)
class _Deadline:
    at: float  # loop time
    seconds: float
    level: int  # 0 build, n stage nesting depth, _STEP_LEVEL step
    label: str  # "build", "stage 'test'", "step"


@dataclass(frozen=True)
class _Result:
    state: StepState  # SUCCEEDED, FAILED, TIMED_OUT or CANCELLED
    fired: _Deadline | None = None  # the timeout that ended it, if any


_Why = _Deadline | Literal["cancel"] | None
_Attempt = tuple[StepState, int | None, _Deadline | None]


class _StepLog:
    """Writes one step's output, prefixing every line when ``prefix`` is set."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]], prefix: str | None) -> None:
        self._write = write
        self._prefix = prefix.encode() if prefix else None
        self.at_line_start = True

    async def __call__(self, data: bytes) -> None:
        if not data:
            return
        if self._prefix is not None:
            out = bytearray()
            at_start = self.at_line_start
            parts = data.split(b"\n")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                if last and not part:
                    break
                if at_start:
                    out += self._prefix
                out += part
                if not last:
                    out += b"\n"
                at_start = not last
            data = bytes(out)
        self.at_line_start = data.endswith(b"\n")
        await self._write(data)

    async def end_line(self) -> None:
        if not self.at_line_start:
            await self(b"\n")

    async def line(self, text: str) -> None:
        await self.end_line()
        await self(text.encode() + b"\n")


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def collect_artifacts(
    workspace: Path, patterns: list[str]
) -> tuple[dict[str, Path], list[str], list[str]]:
    """Expand ``patterns`` in ``workspace``.

    Returns ``(files, refused, unmatched)``: files by '/'-separated relative path
    (values are resolved paths), matches that resolve outside the workspace, and
    patterns that matched no file.
    """
    root = workspace.resolve()
    files: dict[str, Path] = {}
    refused: list[str] = []
    unmatched: list[str] = []
    for pattern in patterns:
        count = 0
        for match in sorted(glob.glob(pattern, root_dir=workspace, recursive=True)):
            full = workspace / match
            if not full.is_file():  # follows symlinks; dirs, broken links, loops: ignored
                continue
            count += 1
            rel = posixpath.normpath(match.replace(os.sep, "/"))
            resolved = full.resolve()
            if rel == ".." or rel.startswith("../") or not resolved.is_relative_to(root):
                if rel not in refused:
                    refused.append(rel)
                continue
            files.setdefault(rel, resolved)
        if count == 0:
            unmatched.append(pattern)
    return files, refused, unmatched


class BuildExecutor:
    def __init__(self, ctx: BuildContext, reporter: BuildReporter) -> None:
        self.ctx = ctx
        self.reporter = reporter
        self._cancel_event = asyncio.Event()
        self._post_abort = asyncio.Event()
        self._abort = self._cancel_event  # what kills the running steps: switched for post
        self._cancels = 0
        self._post_allowance: int | None = None  # cancels tolerated by post steps
        self._attempts: dict[str, int] = {}
        self._skipped: set[str] = set()
        self._procs: set[StepProcess] = set()
        self._log_lock = asyncio.Lock()
        self._log_bytes = 0  # written so far, against plan.log_limit
        self.cause: str | None = None  # why the build failed, when known here (checkout)
        self._log_cut = False  # the limit was reached: later output is dropped
        self._started = False

    def cancel(self) -> None:
        """Request cancellation. A second request also kills the post steps."""
        self._cancels += 1
        self._cancel_event.set()
        if self._post_allowance is not None and self._cancels > self._post_allowance:
            self._post_abort.set()

    async def run(self) -> BuildState:
        if self._started:
            raise RuntimeError("BuildExecutor.run() can only be called once")
        self._started = True
        self.ctx.workspace.mkdir(parents=True, exist_ok=True)
        chain: tuple[_Deadline, ...] = ()
        if self.ctx.plan.timeout is not None:
            now = asyncio.get_running_loop().time()
            timeout = self.ctx.plan.timeout
            chain = (_Deadline(now + timeout, timeout, 0, "build"),)
        try:
            main = await self._run_main(chain)
            return await self._run_post(main)
        finally:
            for proc in list(self._procs):  # only if we are leaving by an exception
                proc.kill_now()

    # -- phases ---------------------------------------------------------------

    async def _run_main(self, chain: tuple[_Deadline, ...]) -> BuildState:
        state = StepState.SUCCEEDED
        if self.ctx.plan.checkout is not None and not await self._checkout():
            state = StepState.FAILED  # every stage is skipped; post failure runs
        for stage in self.ctx.plan.stages:
            if state is not StepState.SUCCEEDED or self._cancel_event.is_set():
                await self._skip_stage(stage)
            elif stage.skipped:
                await self._log_skipped_stage(stage, None)
                await self._skip_stage(stage)
            else:
                state = (await self._run_stage(stage, chain, 1, None)).state
        if self._cancel_event.is_set():
            await self._log_line(f"{YELLOW}==> build cancelled{RESET}")
            return BuildState.CANCELLED
        return BuildState(state.value)

    async def _run_post(self, main: BuildState) -> BuildState:
        self._post_allowance = min(self._cancels, 1)
        if self._cancels > self._post_allowance:
            self._post_abort.set()
        self._abort = self._post_abort
        selected = _POST_FOR[main]
        result = main
        for condition in _POST_ORDER:
            run_block = condition in (selected, "always")
            for step in self.ctx.plan.post.get(condition, []):
                if step.kind == "notify":
                    continue  # run and reported by the controller once the result is known
                if not run_block or self._post_abort.is_set():
                    await self._skip_step(step)
                    continue
                outcome = await self._run_step(step, (), None, post=True)
                if outcome.state is StepState.SUCCEEDED:
                    continue
                run_block = False
                await self._skip_step(step)  # only if it never started
                if outcome.state is not StepState.CANCELLED and result is BuildState.SUCCEEDED:
                    result = BuildState.FAILED
        if self._post_abort.is_set():
            return BuildState.CANCELLED
        return result

    # -- stages ---------------------------------------------------------------

    async def _run_stage(
        self, stage: StagePlan, chain: tuple[_Deadline, ...], level: int, prefix: str | None
    ) -> _Result:
        attempts = stage.retry + 1
        result = _Result(StepState.SUCCEEDED)
        for n in range(attempts):
            if n:
                await self._log_line(
                    f"{YELLOW}==> retrying stage '{stage.name}' ({n + 1} of {attempts}){RESET}",
                    prefix,
                )
            stage_chain = chain
            if stage.timeout is not None:
                at = asyncio.get_running_loop().time() + stage.timeout
                label = f"stage '{stage.name}'"
                stage_chain = (*chain, _Deadline(at, stage.timeout, level, label))
            if stage.parallel:
                result = await self._run_parallel(stage, stage_chain, level)
            else:
                result = await self._run_steps(stage.steps, stage_chain, prefix)
            if result.state in (StepState.SUCCEEDED, StepState.CANCELLED):
                break
            if result.fired is not None and result.fired.level < level:
                break  # an enclosing timeout: retrying is pointless
        if result.state is not StepState.SUCCEEDED:
            await self._skip_stage(stage)
        return result

    async def _run_parallel(
        self, stage: StagePlan, chain: tuple[_Deadline, ...], level: int
    ) -> _Result:
        prefixed = len(stage.parallel) > 1

        async def child_run(child: StagePlan) -> _Result:
            prefix = f"[{child.name}] " if prefixed else None
            if child.skipped:
                await self._log_skipped_stage(child, prefix)
                await self._skip_stage(child)
                return _Result(StepState.SUCCEEDED)
            return await self._run_stage(child, chain, level + 1, prefix)

        tasks = [asyncio.create_task(child_run(child)) for child in stage.parallel]
        try:
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        results = [task.result() for task in tasks]
        state = max((r.state for r in results), key=_SEVERITY.index, default=StepState.SUCCEEDED)
        fired = [r.fired for r in results if r.fired is not None]
        return _Result(state, min(fired, key=lambda d: d.level) if fired else None)

    async def _run_steps(
        self, steps: list[StepPlan], chain: tuple[_Deadline, ...], prefix: str | None
    ) -> _Result:
        for step in steps:
            result = await self._run_step(step, chain, prefix)
            if result.state is not StepState.SUCCEEDED:
                return result
        return _Result(StepState.SUCCEEDED)

    # -- steps ----------------------------------------------------------------

    async def _run_step(
        self,
        step: StepPlan,
        chain: tuple[_Deadline, ...],
        prefix: str | None,
        *,
        post: bool = False,
    ) -> _Result:
        out = _StepLog(self._write, prefix)
        loop = asyncio.get_running_loop()
        attempts = step.retry + 1
        result = _Result(StepState.FAILED)
        for n in range(attempts):
            if self._abort.is_set():
                return _Result(StepState.CANCELLED)
            now = loop.time()
            expired = [d for d in chain if d.at <= now]
            if expired:
                fired = min(expired, key=lambda d: d.level)
                await out.line(self._timeout_message(fired))
                return _Result(StepState.TIMED_OUT, fired)
            timeout = step.timeout
            if post and timeout is None:
                timeout = self.ctx.post_timeout
            step_chain = chain
            if timeout is not None:
                step_chain = (*chain, _Deadline(now + timeout, timeout, _STEP_LEVEL, "step"))
            attempt = self._attempts.get(step.key, 0) + 1
            self._attempts[step.key] = attempt
            suffix = f" (attempt {attempt})" if attempt > 1 else ""
            await out.line(f"{BOLD}==> [{step.stage}] {step.name}{suffix}{RESET}")
            await self.reporter.step_started(step.key, attempt)
            state, code, fired_at = await self._attempt(step, step_chain, out)
            await out.end_line()
            if state is StepState.FAILED:
                what = f" with exit code {code}" if code is not None else ""
                await out.line(f"{RED}==> step failed{what}{RESET}")
            elif state is StepState.TIMED_OUT and fired_at is not None:
                await out.line(self._timeout_message(fired_at))
            elif state is StepState.CANCELLED:
                await out.line(f"{YELLOW}==> step cancelled{RESET}")
            await self.reporter.step_finished(step.key, state, code, attempt)
            result = _Result(state, fired_at)
            if state in (StepState.SUCCEEDED, StepState.CANCELLED):
                return result
            if fired_at is not None and fired_at.level != _STEP_LEVEL:
                return result  # stage or build timeout: no step retry
            if n + 1 < attempts:
                await out.line(f"{YELLOW}==> retrying step ({n + 2} of {attempts}){RESET}")
        return result

    async def _attempt(
        self, step: StepPlan, chain: tuple[_Deadline, ...], out: _StepLog
    ) -> _Attempt:
        if step.kind == "echo":
            await out((step.message or "").encode() + b"\n")
            return StepState.SUCCEEDED, None, None
        if step.kind in ("archive", "publish"):
            work = self._archive(step, out) if step.kind == "archive" else self._publish(step, out)
            task = asyncio.create_task(work)
            try:
                why = await self._watch(task, chain)
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
            if why is None:
                return (StepState.SUCCEEDED if task.result() else StepState.FAILED), None, None
            return self._interrupted(why)
        return await self._run_sh(step, chain, out)

    async def _run_sh(
        self, step: StepPlan, chain: tuple[_Deadline, ...], out: _StepLog
    ) -> _Attempt:
        """Bind the step's credentials (env, temp files removed afterwards), then run."""
        if not step.credentials:
            return await self._run_sh_with(step, chain, out, {})
        root = self.ctx.secrets_dir or self.ctx.workspace.parent / ".conveyor-secrets"
        try:
            with bind_credentials(step.credentials, self.ctx.credentials, root) as bound:
                return await self._run_sh_with(step, chain, out, bound)
        except CredentialUnavailable as exc:
            await out.line(f"{RED}==> {exc}{RESET}")
            return StepState.FAILED, None, None

    async def _run_sh_with(
        self, step: StepPlan, chain: tuple[_Deadline, ...], out: _StepLog, bound: dict[str, str]
    ) -> _Attempt:
        if step.script is None:
            await out.line(f"{RED}==> sh step without a script{RESET}")
            return StepState.FAILED, None, None
        env = self._step_env(step)
        env.update(bound)
        bash = shutil.which("bash", path=env.get("PATH"))
        if bash:
            argv = [bash, "-e", "-o", "pipefail", "-c", step.script]
        else:
            argv = ["/bin/sh", "-e", "-c", step.script]
        proc = StepProcess(
            argv, cwd=self.ctx.workspace, env=env, output=out, kill_grace=self.ctx.kill_grace
        )
        self._procs.add(proc)
        try:
            try:
                await proc.start()
            except OSError as exc:
                await out.line(f"{RED}==> could not start the step: {exc}{RESET}")
                return StepState.FAILED, None, None
            wait_task = asyncio.create_task(proc.wait())
            try:
                why = await self._watch(wait_task, chain)
                if why is not None:
                    await proc.terminate()
                returncode = await wait_task
            finally:
                if not wait_task.done():
                    wait_task.cancel()
                    await asyncio.wait({wait_task})
        finally:
            await proc.close()  # kills and reaps whatever is left on error paths
            self._procs.discard(proc)
        if proc.leftovers:
            await out.line(f"{DIM}==> stopped {proc.leftovers} leftover process(es){RESET}")
        if why is not None:
            return self._interrupted(why)
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            await out.line(f"{RED}==> step killed by signal {name}{RESET}")
            return StepState.FAILED, 128 - returncode, None
        state = StepState.SUCCEEDED if returncode == 0 else StepState.FAILED
        return state, returncode, None

    async def _archive(self, step: StepPlan, out: _StepLog) -> bool:
        if not step.paths:
            await out.line(f"{RED}archive: no paths given{RESET}")
            return False
        for pattern in step.paths:
            if os.path.isabs(pattern):
                await out.line(f"{RED}archive: refusing absolute pattern '{pattern}'{RESET}")
                return False
        files, refused, unmatched = await asyncio.to_thread(
            collect_artifacts, self.ctx.workspace, step.paths
        )
        for rel in refused:
            await out.line(f"{RED}archive: refusing '{rel}': it is outside the workspace{RESET}")
        if refused:
            return False
        if not files:
            patterns = ", ".join(f"'{p}'" for p in step.paths)
            await out.line(f"{RED}archive: no files match {patterns}{RESET}")
            return False
        for pattern in unmatched:
            await out.line(f"{YELLOW}archive: no files match '{pattern}'{RESET}")
        for rel, path in files.items():
            await out.line(f"archive: {rel}")
            await self.reporter.upload_artifact(rel, path)
        return True

    async def _publish(self, step: StepPlan, out: _StepLog) -> bool:
        """Upload to an external repository (conveyor.agent.publish); what reached it
        is reported (``record_publication``) even when a later upload fails."""
        from conveyor.agent.publish import PublishError, publish
        from conveyor.core.publish import PublishSpec

        done: list[Any] = []
        ok = True
        root = self.ctx.secrets_dir or self.ctx.workspace.parent / ".conveyor-secrets"
        try:
            spec = PublishSpec.model_validate(step.publish or {})
            # Stored credentials bound to the step fill ${VAR} in its username/password.
            with bind_credentials(step.credentials, self.ctx.credentials, root) as bound:
                env = self._step_env(step)
                env.update(bound)
                await publish(spec, self.ctx.workspace, env, out.line, done)
        except CredentialUnavailable as exc:
            ok = False
            await out.line(f"{RED}==> {exc}{RESET}")
        except PublishError as exc:
            ok = False
            for line in str(exc).splitlines() or [""]:
                await out.line(f"{RED}{line}{RESET}" if line.startswith("publish:") else line)
        except ValueError as exc:  # an invalid spec in a plan made elsewhere
            ok = False
            await out.line(f"{RED}publish: invalid step: {exc}{RESET}")
        except Exception as exc:  # unreadable file, odd URL...: the step fails, not the agent
            ok = False
            await out.line(f"{RED}publish: failed: {type(exc).__name__}: {exc}{RESET}")
        for publication in done:
            await self.reporter.record_publication(step.key, publication.to_json())
        return ok

    # -- helpers --------------------------------------------------------------

    async def _watch(self, task: asyncio.Future[Any], chain: tuple[_Deadline, ...]) -> _Why:
        """Wait for ``task``; return None when it finished, else why it must stop."""
        loop = asyncio.get_running_loop()
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            while not task.done():
                timeout = None
                if chain:
                    nearest = min(chain, key=lambda d: (d.at, d.level))
                    timeout = nearest.at - loop.time()
                    if timeout <= 0:
                        return nearest
                done, _ = await asyncio.wait(
                    {task, abort}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    return None
                if abort in done:
                    return "cancel"
            return None
        finally:
            abort.cancel()

    @staticmethod
    def _interrupted(why: _Deadline | Literal["cancel"]) -> _Attempt:
        if why == "cancel":
            return StepState.CANCELLED, None, None
        assert isinstance(why, _Deadline)
        return StepState.TIMED_OUT, None, why

    @staticmethod
    def _timeout_message(deadline: _Deadline) -> str:
        return f"{RED}==> {deadline.label} timed out after {_fmt_seconds(deadline.seconds)}{RESET}"

    def _step_env(self, step: StepPlan) -> dict[str, str]:
        env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(self.ctx.base_env)
        env.update(self.ctx.plan.environment)
        env.update(step.environment)
        return env

    async def _write(self, data: bytes) -> None:
        async with self._log_lock:  # log() is never called concurrently
            limit = self.ctx.plan.log_limit
            if limit is None:
                await self.reporter.log(data)
                return
            if self._log_cut:
                return  # over the limit: dropped here, never sent (the build goes on)
            room = limit - self._log_bytes
            if len(data) <= room:
                self._log_bytes += len(data)
                await self.reporter.log(data)
                return
            self._log_cut = True
            head = data[: max(room, 0)]
            newline = b"\n" if head and not head.endswith(b"\n") else b""
            source = self.ctx.plan.log_limit_source or "log limit"
            cut = head + newline + truncation_line(limit, source)
            self._log_bytes += len(cut)
            await self.reporter.log(cut)

    async def _checkout(self) -> bool:
        """Check out the build's commit; a cancel stops it (then the build is cancelled).
        A failure's reason becomes the build's cause (:attr:`cause`)."""
        from conveyor.agent.checkout import checkout

        assert self.ctx.plan.checkout is not None
        if self._cancel_event.is_set():
            return False
        mirrors = self.ctx.mirror_root or self.ctx.workspace.parent.parent / "mirrors"
        work = asyncio.create_task(
            checkout(
                self.ctx.plan.checkout,
                self.ctx.workspace,
                mirrors,
                self._log_line,
                self.ctx.credentials,
            )
        )
        cancelled = asyncio.create_task(self._cancel_event.wait())
        try:
            await asyncio.wait({work, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if not work.done() or work.cancelled():
            return False
        failure = work.result()
        if failure is not None:
            self.cause = failure
        return failure is None

    async def _log_line(self, text: str, prefix: str | None = None) -> None:
        await self._write(f"{prefix or ''}{text}\n".encode())

    async def _log_skipped_stage(self, stage: StagePlan, prefix: str | None) -> None:
        reason = f": {stage.skip_reason}" if stage.skip_reason else ""
        await self._log_line(f"{DIM}==> [{stage.name}] skipped{reason}{RESET}", prefix)

    async def _skip_step(self, step: StepPlan) -> None:
        """Report SKIPPED once, and only for a step that never started."""
        if step.key in self._attempts or step.key in self._skipped:
            return
        self._skipped.add(step.key)
        await self.reporter.step_finished(step.key, StepState.SKIPPED, None, 0)

    async def _skip_stage(self, stage: StagePlan) -> None:
        for step in stage.steps:
            await self._skip_step(step)
        for child in stage.parallel:
            await self._skip_stage(child)
