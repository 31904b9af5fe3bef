"""One step's subprocess: spawn, stream its output, and make sure nothing survives it.

A step runs in its own session/process group (``start_new_session=True``). Every
process that belongs to a step is found by any of:

* membership of the step's process group,
* being a descendant of the step's shell (tracked by polling while it runs, so
  children that ``setsid`` and are later orphaned are still known),
* carrying the step's cookie in its environment (``CONVEYOR_PROCESS_COOKIE``),
  which catches double-forked daemons that were never seen as descendants.

When the step ends (normally, by timeout or by cancellation) whatever is still
alive gets SIGTERM, then SIGKILL after a grace period.

Finding them walks the host's process table at every step end, so it is kept
cheap (on Linux): ``/proc/PID/stat`` gives each process's group and start time,
and only a process started after the step started can carry its cookie, so only
those have their environment read. Elsewhere psutil walks every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import psutil

#: Environment variable holding the per-attempt cookie used to find stray processes.
COOKIE_VAR = "CONVEYOR_PROCESS_COOKIE"

READ_SIZE = 1024 * 1024
#: The step's output pipe holds this much (Linux; pipe-max-size is 1 MiB by default):
#: a flood is read in few large reads instead of one per 64 KiB (the default pipe).
PIPE_SIZE = 1024 * 1024
#: A partial line is flushed once it is this old (seconds) or this large (bytes).
FLUSH_DELAY = 0.1
MAX_PENDING = 64 * 1024
#: How often descendants are polled while the step runs (the first time after
#: TRACK_FIRST: a step that ends sooner costs no walk of the process table).
TRACK_INTERVAL = 0.5
TRACK_FIRST = 0.05
#: How long to wait for the output pipe to reach EOF once every process is gone.
DRAIN_TIMEOUT = 2.0
#: Slack (clock ticks) when comparing process start times with the step's start.
START_SLACK_TICKS = 10

OutputSink = Callable[[bytes], Awaitable[None]]


class _Readable(Protocol):
    async def read(self, n: int) -> bytes: ...


class PipeReader:
    """Reads the read end of a pipe without handing it to the event loop.

    ``loop.connect_read_pipe`` under uvloop closes the descriptor twice (libuv and the
    file object both own it: uvloop issue #763); when another thread opened a file in
    between and got the same number, that file was closed under it, e.g. an outbox
    file: ``[Errno 9] Bad file descriptor`` and a build that never finishes. Here the
    descriptor has one owner, closed once by :meth:`close`; readiness comes from
    ``loop.add_reader``, which works on any loop and never closes anything. A read is
    made only when the pump asks for one, so a slow consumer leaves the output in the
    pipe and the step blocks on a full pipe (back-pressure, no unbounded buffer)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd

    async def read(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if self.fd is None:
                return b""
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            fd = self.fd
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _grow_pipe(fd: int) -> None:
    """Make the pipe hold PIPE_SIZE where the system allows (else keep its size)."""
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def pump_output(
    reader: _Readable,
    emit: OutputSink,
    *,
    flush_delay: float = FLUSH_DELAY,
    max_pending: int = MAX_PENDING,
) -> None:
    """Forward ``reader`` to ``emit`` until EOF.

    Complete lines are emitted as soon as they arrive; a trailing partial line
    is held back until it is ``flush_delay`` seconds old or ``max_pending``
    bytes long (or EOF), so that prompts and progress output still show up.
    """
    loop = asyncio.get_running_loop()
    pending = bytearray()
    pending_since = 0.0
    read_task: asyncio.Future[bytes] | None = None
    try:
        while True:
            if read_task is None:
                read_task = asyncio.ensure_future(reader.read(READ_SIZE))
            timeout = None
            if pending:
                timeout = max(0.0, pending_since + flush_delay - loop.time())
            done, _ = await asyncio.wait({read_task}, timeout=timeout)
            if not done:
                data = bytes(pending)
                pending.clear()
                await emit(data)
                continue
            chunk = read_task.result()
            read_task = None
            if not chunk:
                break
            if not pending:
                pending_since = loop.time()
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) >= max_pending:
                cut = len(pending)
            if cut:
                data = bytes(pending[:cut])
                del pending[:cut]
                pending_since = loop.time()
                await emit(data)
        if pending:
            await emit(bytes(pending))
    finally:
        if read_task is not None and not read_task.done():
            read_task.cancel()


_PROC = "/proc"
_HAS_PROC = os.path.isdir(_PROC)
_ticks_offset: float | None = None


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _probe_start(found: list[int]) -> None:
    """Run in a new thread: record its own start time (kernel clock ticks)."""
    fields = _stat_fields(f"self/task/{threading.get_native_id()}")
    if fields is not None and len(fields) > 19:
        found.append(int(fields[19]))


def _kernel_ticks_now() -> float | None:
    """Now, on the clock of the start times in /proc/PID/stat (clock ticks since boot),
    calibrated once against a thread started for the purpose (the kernel's own clock
    for process start times, whatever it is on this kernel)."""
    global _ticks_offset
    hz = os.sysconf("SC_CLK_TCK")
    if _ticks_offset is None:
        best: tuple[float, float] | None = None  # (uncertainty, offset)
        for _ in range(3):
            found: list[int] = []
            thread = threading.Thread(target=_probe_start, args=(found,), name="proc-clock")
            before = time.clock_gettime(time.CLOCK_BOOTTIME) * hz
            thread.start()
            after = time.clock_gettime(time.CLOCK_BOOTTIME) * hz
            thread.join()
            if not found:
                return None
            # The thread started between before and after: taking "after" errs on
            # the side of scanning a few more processes, never fewer.
            candidate = (after - before, found[0] - after)
            if best is None or candidate < best:
                best = candidate
            if after - before < 1:
                break
        assert best is not None
        _ticks_offset = best[1]
    return time.clock_gettime(time.CLOCK_BOOTTIME) * hz + _ticks_offset


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return entry in data.split(b"\0")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)  # psutil checks the pid was not reused


class StepProcess:
    """A step's shell plus everything it starts."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        output: OutputSink,
        kill_grace: float,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.cookie = uuid.uuid4().hex
        self.env = {**env, COOKIE_VAR: self.cookie}
        self.output = output
        self.kill_grace = kill_grace
        #: How many processes were still alive when the shell exited by itself.
        self.leftovers = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: PipeReader | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tracker: asyncio.Task[None] | None = None
        self._known: dict[int, psutil.Process] = {}
        #: Processes started before this (kernel clock ticks) cannot carry the cookie.
        self._since_ticks: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        now = _kernel_ticks_now() if _HAS_PROC else None
        self._since_ticks = None if now is None else now - START_SLACK_TICKS
        read_fd, write_fd = os.pipe()
        _grow_pipe(read_fd)
        try:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                )
            finally:
                os.close(write_fd)
            reader = PipeReader(read_fd)
        except BaseException:
            os.close(read_fd)
            raise
        self._reader = reader
        self._pump = asyncio.create_task(pump_output(reader, self.output))
        self._tracker = asyncio.create_task(self._track())

    async def _track(self) -> None:
        assert self._proc is not None
        await asyncio.sleep(TRACK_FIRST)
        while self._proc.returncode is None:
            self._remember_descendants()
            await asyncio.sleep(TRACK_INTERVAL)

    def _remember_descendants(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        try:
            children = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            self._known[child.pid] = child

    def find_processes(self) -> list[psutil.Process]:
        """Every live process that belongs to this step (the shell excluded)."""
        assert self._proc is not None
        self._remember_descendants()
        found: dict[int, psutil.Process] = {}
        for proc in self._known.values():
            if _alive(proc):
                found[proc.pid] = proc
        me = os.getpid()
        pgid = self._proc.pid
        if self._since_ticks is not None:
            try:
                self._scan_proc(found, me, pgid, self._since_ticks)
                return list(found.values())
            except OSError:
                pass  # /proc unreadable: the portable, slower way below
        for proc in psutil.process_iter():
            if proc.pid in (me, pgid) or proc.pid in found:
                continue
            try:
                mine = os.getpgid(proc.pid) == pgid
                if not mine:
                    mine = proc.environ().get(COOKIE_VAR) == self.cookie
            except (OSError, psutil.Error):
                continue
            if mine and _alive(proc):
                found[proc.pid] = proc
        return list(found.values())

    def _scan_proc(
        self, found: dict[int, psutil.Process], me: int, pgid: int, since: float
    ) -> None:
        """find_processes() on Linux: group from /proc/PID/stat; the environment only of
        processes started since the step (those that may carry the cookie)."""
        cookie = f"{COOKIE_VAR}={self.cookie}".encode()
        with os.scandir(_PROC) as entries:
            for entry in entries:
                name = entry.name
                if not name.isdigit():
                    continue
                pid = int(name)
                if pid in (me, pgid) or pid in found:
                    continue
                fields = _stat_fields(pid)
                if fields is None or len(fields) < 20:
                    continue
                mine = int(fields[2]) == pgid
                if not mine and int(fields[19]) >= since:
                    mine = _environ_has(pid, cookie)
                if not mine:
                    continue
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:
                    continue
                if _alive(proc):
                    found[pid] = proc

    def _signal_all(self, procs: Iterable[psutil.Process], sig: int) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            # The leader is not reaped yet, so the group id cannot have been reused.
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, sig)
        _signal(procs, sig)

    async def terminate(self) -> None:
        """SIGTERM everything, wait up to ``kill_grace``, then SIGKILL what is left."""
        proc = self._proc
        if proc is None:
            return
        victims = self.find_processes()  # snapshot before anything can reparent
        self._signal_all(victims, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.kill_grace
        while loop.time() < give_up:
            victims = [v for v in victims if _alive(v)]
            if proc.returncode is None:
                self._remember_descendants()
            elif not victims:
                break
            await asyncio.sleep(0.05)
        self._signal_all([v for v in victims if _alive(v)] + self.find_processes(), signal.SIGKILL)
        await proc.wait()

    def kill_now(self) -> None:
        """SIGKILL everything immediately (last resort, synchronous)."""
        if self._proc is None:
            return
        with contextlib.suppress(Exception):
            self._signal_all(self.find_processes(), signal.SIGKILL)

    async def wait(self) -> int:
        """Wait for the shell to exit, clean up leftovers, drain the output.

        Returns the exit status (negative for a signal, as in ``subprocess``).
        Raises whatever the output sink raised.
        """
        proc, pump = self._proc, self._pump
        assert proc is not None and pump is not None
        exit_task = asyncio.ensure_future(proc.wait())
        try:
            pending: set[asyncio.Future[Any]] = {exit_task, pump}
            while not exit_task.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if pump in done:
                    pump.result()  # re-raise a failing sink; EOF before exit is fine
        finally:
            exit_task.cancel()
        returncode = exit_task.result()
        leftovers = self.find_processes()
        if leftovers:
            self.leftovers = len(leftovers)
            await self.terminate()
        done, _ = await asyncio.wait({pump}, timeout=DRAIN_TIMEOUT)
        if done:
            pump.result()
        return returncode

    async def close(self) -> None:
        """Release the pipe and helper tasks; kill and reap the shell if needed."""
        tasks = [t for t in (self._tracker, self._pump) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # does not raise the tasks' errors
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # mark retrieved
        if self._reader is not None:
            self._reader.close()  # the pump is done or cancelled: nobody reads any more
        if self._proc is not None and self._proc.returncode is None:
            self.kill_now()
            await self._proc.wait()
