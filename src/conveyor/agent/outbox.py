"""A durable per-build outbox: what a build reports survives a controller outage.

The executor's reporter only appends to the outbox, on the agent's disk; it never
waits for the network, so a build goes on while no controller is reachable. One
sender task per outbox delivers, strictly in order, when a controller answers.

Layout of ``WORKDIR/outbox/<assignment_id>/``:

* ``log-<start offset>.bin``: the log spool, in segments (16 MiB by default) named by
  the byte offset of their first byte; a segment whose bytes were all acknowledged
  is deleted, so a long build's log does not pile up on the agent's disk.
* ``events.jsonl``: ordered events (step started/finished, artifact, finish), one
  JSON object a line, each with the log offset ``at`` at which it was emitted.
* ``artifacts/``: hard links to archived files (a snapshot that survives the
  workspace being cleaned); where no link can be made the event names the
  workspace file, which then stays until delivery.
* ``state.json``: delivery progress (acknowledged log offset, next chunk seq,
  acknowledged events) and the chunks in flight, written (temp file + rename)
  before each request, so a new agent process resumes exactly where this one
  stopped.

Delivery: log chunks of up to ``MAX_CHUNK`` (4 MiB) go as ``POST .../log?seq=N&offset=BYTE``
(the controller keeps the first chunk of each seq, so a resend is harmless as long
as it is identical: the chunks in flight are recorded before they are sent, and a
restarted agent resends exactly those chunks).

Pipelining: up to ``MAX_INFLIGHT_CHUNKS`` (2) chunks are in flight at once, each
request on its own connection, so the controller stores chunk N while chunk N+1
travels and the agent saves its state for it. They may arrive (and be stored) out
of order: the controller keys chunks by seq and its readers stop at a gap (a
follower is woken again when the missing chunk lands). Each chunk is retried on
its own, with the same seq, offset and bytes, until it is acknowledged; the agent
advances (acknowledged offset, freed budget, deleted spool segments) strictly in
seq order, only past chunks whose acknowledgement it holds, so a failure of the
second chunk never moves anything past the first. A chunk beyond the first in
flight is only cut once ``PIPELINE_MIN_BYTES`` are ready (a flood), so live
output still goes one small chunk at a time, as soon as it is flushed.

An event goes only once every log
byte before its ``at`` was acknowledged (chunks are cut at event offsets), so the
controller sees step results in order with the log. Step updates are idempotent
state writes, an artifact PUT replaces, finish is idempotent: re-sending the one
request whose answer was lost is harmless. The finish event is last; once it is
acknowledged the outbox directory is removed.

Batching (``batch_events``, when the controller offers ``POST .../events``): all
consecutive step and finish events that are ready (their log bytes acknowledged)
go in one request, applied by the controller in one transaction, in order, the
finish still last; they are acknowledged together (re-sending the batch is as
harmless as re-sending each). A batch refused as a bad request (400/413/422) is
sent again event by event, so that only the bad event is skipped; a controller
without the endpoint (404 "Not Found" for the route itself) gets single events
from then on.

Durability: events are fsync'd when appended (after the log bytes before them);
log output is gathered in memory and written + fsync'd to the spool
``LIVE_FLUSH_SECONDS`` after a write when the sender is idle (live output), else
when the sender is ready again, after at most ``FLUSH_SECONDS``, or once
``FLUSH_BYTES`` gathered (then at once, by the flusher task, while the writer goes
on: it waits for the disk only once ``MAX_PENDING_BYTES`` are pending); never per
write. Only flushed bytes are sent.
A disk error (full...) makes the writer wait and retry, never tears a file.

Bound: the log bytes not yet acknowledged, over all outboxes sharing an
:class:`OutboxBudget`, stay under ``max_bytes``; a writer that would exceed it
waits (back-pressure on the build's output) instead of dropping anything.

A 4xx answer on delivery (404, 409...: the assignment is no longer this agent's)
ends the outbox: delivery stops, ``on_rejected`` is called (the agent cancels the
build), later output is discarded and the directory removed; only 400/413/422 to
an event (a bad request, e.g. a refused artifact path) skip that event. Network
errors and 5xx are retried forever with jittered backoff capped at ``max_backoff``
(2 s), so delivery resumes within about that long after the controller is back
(artifact uploads retry inside ``AgentClient.upload``, with the client's own cap:
give the outbox a client made with ``max_backoff=MAX_BACKOFF``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import structlog

from conveyor.agent.client import AgentClient, ProtocolError
from conveyor.core.states import StepState

log = structlog.get_logger(__name__)

#: Default bound on unacknowledged log bytes kept on the agent's disk (1 GiB).
DEFAULT_MAX_OUTBOX_BYTES = 1024 * 1024 * 1024
#: Largest log chunk sent in one request (the controller's MAX_LOG_CHUNK): a flood
#: of output goes in few, large requests (one transaction each on the controller).
MAX_CHUNK = 4 * 1024 * 1024
#: Log chunks in flight at once (each on its own connection): the controller's write
#: of one overlaps the agent's send of the next.
MAX_INFLIGHT_CHUNKS = 2
#: A chunk beyond the first in flight is cut only once this much is ready (a flood);
#: a few live lines wait for the chunk in flight instead of making a tiny request.
PIPELINE_MIN_BYTES = 1024 * 1024
#: Output is written and fsync'd to the spool at most this long after it was written
#: while a delivery is in flight (it could not be sent sooner anyway), or once this
#: much gathered...
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 1024 * 1024
#: Once FLUSH_BYTES gathered the flusher writes them at once while the writer goes on
#: reading the step's output; the writer waits for the disk only past this much.
MAX_PENDING_BYTES = 4 * FLUSH_BYTES
#: ...and this soon when the sender waits for output (a live follower sees a line
#: within a few ms of the agent, not after a fixed flush period).
LIVE_FLUSH_SECONDS = 0.005
#: A new spool segment is started once the current one holds this much.
SEGMENT_BYTES = 16 * 1024 * 1024
#: Cap of the delivery backoff: sending resumes this soon after a controller is back.
MAX_BACKOFF = 2.0
#: 4xx answers to an event that mean "this request is bad", not "not your build":
#: the event is skipped (with a warning) instead of ending the outbox.
_BAD_EVENT_STATUS = frozenset({400, 413, 422})
#: Most events sent in one batch (the controller accepts up to 1000).
MAX_BATCH_EVENTS = 500
#: Event kinds that may go in a batch (an artifact is an upload of its own).
_BATCHABLE = frozenset({"step", "finish"})

STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
ARTIFACTS_DIR = "artifacts"
_SEGMENT_RE = re.compile(r"^log-(\d{16,})\.bin$")

EventKind = Literal["step", "artifact", "finish", "publication"]


class OutboxCorrupt(Exception):
    """An outbox directory left behind cannot be read back consistently."""


class OutboxBudget:
    """Unacknowledged log bytes that the outboxes sharing it may hold, in total.

    A writer that would exceed the bound waits until deliveries free room; room
    is always granted when nothing is held, so one write larger than the bound
    cannot wait forever."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_OUTBOX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.used = 0
        self._freed = asyncio.Event()

    def would_wait(self, size: int) -> bool:
        return self.used > 0 and self.used + size > self.max_bytes

    async def wait_freed(self) -> None:
        """Wait until some room was freed (or :meth:`wake` was called); check again."""
        self._freed.clear()
        await self._freed.wait()

    def take(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        if size > 0:
            self.used = max(0, self.used - size)
            self.wake()

    def wake(self) -> None:
        self._freed.set()


@dataclass
class _Event:
    index: int
    at: int  # log byte offset at which it was emitted
    kind: EventKind
    body: dict[str, Any]

    def to_line(self) -> bytes:
        record = {"i": self.index, "at": self.at, "kind": self.kind, "body": self.body}
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


@dataclass
class _Batch:
    """Consecutive ready step/finish events, sent in one request."""

    events: list[_Event]


@dataclass
class _Segment:
    start: int
    path: Path


@dataclass
class _Chunk:
    seq: int
    offset: int
    size: int


@dataclass
class _Loaded:
    state: dict[str, Any]
    events: list[_Event]
    segments: list[_Segment]
    flushed: int
    created: bool


@dataclass
class _Progress:
    acked: int = 0  # log bytes acknowledged by the controller
    seq: int = 0  # seq of the next log chunk
    events_acked: int = 0
    #: the chunks in flight, in seq order (the first is at ``acked``, seq ``seq``)
    inflight: list[_Chunk] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 2,
            "acked_offset": self.acked,
            "next_seq": self.seq,
            "events_acked": self.events_acked,
            "inflight": [{"seq": c.seq, "offset": c.offset, "size": c.size} for c in self.inflight],
            "meta": self.meta,
        }


def list_outboxes(root: Path) -> list[str]:
    """Assignment ids of the outbox directories under ``root`` (left by an earlier run)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class _Unbatch(Exception):
    """A batch of events must be sent again one by one."""


def _no_such_route(error: ProtocolError) -> bool:
    """The controller does not know the endpoint at all (an older one), as opposed to
    not knowing the assignment (its 404 names the assignment)."""
    return error.status_code == 405 or (
        error.status_code == 404 and error.detail.strip() == "Not Found"
    )


class _Rejected(Exception):
    def __init__(self, error: ProtocolError) -> None:
        super().__init__(str(error))
        self.error = error


class BuildOutbox:
    """The durable outbox of one assignment, and its sender task.

    Use: ``await open()``, ``start()``; append with :meth:`write`, :meth:`add_step`,
    :meth:`add_artifact` and finally :meth:`finish`; :meth:`wait` returns True once
    everything was delivered (and the directory removed), False if the controller
    refused the assignment. :meth:`close` stops without removing anything (the
    agent is stopping; a later process resumes from the directory)."""

    def __init__(
        self,
        root: Path,
        assignment_id: str,
        client: AgentClient,
        *,
        budget: OutboxBudget | None = None,
        max_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
        on_cancel: Callable[[], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
        max_backoff: float = MAX_BACKOFF,
        segment_bytes: int = SEGMENT_BYTES,
        meta: dict[str, Any] | None = None,
        batch_events: bool = False,
    ) -> None:
        if not assignment_id or "/" in assignment_id or assignment_id.startswith("."):
            raise ValueError(f"invalid assignment id {assignment_id!r}")
        self.directory = root / assignment_id
        self.assignment_id = assignment_id
        self.client = client
        self.budget = budget or OutboxBudget(max_bytes)
        self.on_cancel = on_cancel
        self.on_rejected = on_rejected
        self.max_backoff = max_backoff
        self.segment_bytes = segment_bytes
        self.batch_events = batch_events
        self._saved: tuple[Any, ...] | None = None  # the progress last persisted
        self._progress = _Progress(meta=dict(meta or {}))
        self._events: list[_Event] = []
        self._segments: list[_Segment] = []
        self._pending = bytearray()  # written, not yet in the spool
        self._written = 0  # log bytes written (spool + pending)
        self._flushed = 0  # log bytes durable in the spool
        self._held = 0  # bytes reserved from the budget
        self._io_lock = asyncio.Lock()
        self._wake = asyncio.Event()  # the sender has something new
        self._dirty = asyncio.Event()  # the flusher has something to write
        self._sender_idle = asyncio.Event()  # the sender waits for something to send
        self._urgent = asyncio.Event()  # FLUSH_BYTES gathered: flush without waiting
        self._ended = asyncio.Event()
        self._log_file: BinaryIO | None = None
        self._log_file_size = 0
        self._events_file: BinaryIO | None = None
        self._sender: asyncio.Task[None] | None = None
        #: chunks being delivered, in seq order, each by its own task
        self._window: deque[tuple[_Chunk, asyncio.Task[Any]]] = deque()
        #: chunks a previous process recorded as in flight: resent exactly as they were
        self._resend: list[_Chunk] = []
        self._flusher: asyncio.Task[None] | None = None
        self._opened = False
        self._finished = False  # a finish event was appended
        self._closing = False
        self._dropped = False  # rejected or closed: nothing more is kept
        self._delivered: bool | None = None
        self._outage = False
        self._told_full = False

    # ------------------------------------------------------------ properties

    @property
    def meta(self) -> dict[str, Any]:
        """What the creator recorded (e.g. build id, workspace), read back on resume."""
        return self._progress.meta

    @property
    def finished(self) -> bool:
        """Whether the final result is in the outbox (False for a resumed, interrupted build)."""
        return self._finished

    @property
    def acked_offset(self) -> int:
        return self._progress.acked

    @property
    def written(self) -> int:
        return self._written

    @property
    def delivered(self) -> bool | None:
        """True: all delivered; False: refused by the controller; None: not over yet."""
        return self._delivered

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the directory, or read back the one a previous process left."""
        loaded = await asyncio.to_thread(self._load_sync)
        progress = loaded.state
        self._progress = _progress_from_json(progress, self._progress.meta, loaded.created)
        self._resend = list(self._progress.inflight)
        self._events = loaded.events
        self._segments = loaded.segments
        self._flushed = self._written = loaded.flushed
        self._finished = any(e.kind == "finish" for e in self._events)
        unacked = self._flushed - self._progress.acked
        self.budget.take(unacked)  # already on disk: counted, never waited for
        self._held = unacked
        self._opened = True
        if not loaded.created:
            log.info(
                "outbox.resumed",
                assignment=self.assignment_id,
                log_bytes=unacked,
                events=len(self._events) - self._progress.events_acked,
            )

    def start(self) -> None:
        if not self._opened:
            raise RuntimeError("open() the outbox first")
        if self._sender is None and not self._dropped:
            self._sender = asyncio.create_task(
                self._send_loop(), name=f"outbox:{self.assignment_id}"
            )
            self._flusher = asyncio.create_task(
                self._flush_loop(), name=f"outbox-flush:{self.assignment_id}"
            )

    async def wait(self) -> bool | None:
        """Wait until the outbox is over: True all delivered (the directory is gone),
        False refused by the controller (dropped, gone too), None closed before either
        (the directory stays for a later process)."""
        await self._ended.wait()
        return self._delivered

    async def close(self) -> None:
        """Stop (flushing what was written) without removing anything; idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._flusher is not None and not self._flusher.done():
            self._dirty.set()  # the flusher writes what is pending, then ends
            await asyncio.wait({self._flusher})
        elif not self._dropped and self._opened:
            try:
                async with self._io_lock:
                    await self._flush_locked()
            except OSError:
                log.exception("outbox.flush_failed", assignment=self.assignment_id)
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.wait({self._sender})
        async with self._io_lock:
            self._dropped = True
            await asyncio.to_thread(self._close_files_sync)
        self._release(self._held)
        self.budget.wake()  # a writer waiting for room gives up
        self._ended.set()

    # --------------------------------------------------------------- writing

    async def write(self, data: bytes) -> None:
        """Append build output; waits only for disk (and for room under the bound)."""
        if not data or self._dropped:
            return
        if self._finished:
            raise RuntimeError("the outbox is finished; no more output")
        while self.budget.would_wait(len(data)) and not self._dropped:
            self._full()
            await self.budget.wait_freed()
        if self._dropped:
            return
        self.budget.take(len(data))
        self._held += len(data)
        self._pending += data
        self._written += len(data)
        if len(self._pending) >= FLUSH_BYTES:
            if len(self._pending) < MAX_PENDING_BYTES and self._flushing_behind():
                # A flood: the flusher writes (and fsyncs) in its own time while this
                # writer goes on reading the step's output.
                self._urgent.set()
                self._dirty.set()
                return
            async with self._io_lock:  # the disk is behind: the writer waits for it
                await self._flush_locked()
        else:
            self._dirty.set()

    def _flushing_behind(self) -> bool:
        """Whether a flusher task runs (and so takes output gathered past FLUSH_BYTES)."""
        return self._flusher is not None and not self._flusher.done() and not self._closing

    async def add_step(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        body = {"key": key, "state": state.value, "exit_code": exit_code, "attempt": attempt}
        await self._append_event("step", body)

    async def add_artifact(self, rel_path: str, file: Path) -> None:
        await self._append_event("artifact", {"path": rel_path, "file": str(file)})

    async def add_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        """Where a ``publish`` step put a file (``POST .../publications``)."""
        await self._append_event("publication", {"step": step_key, **publication})

    async def finish(self, result: str, cause: str | None) -> None:
        """Append the final result; nothing can be appended after it."""
        await self._append_event("finish", {"result": result, "cause": cause})

    def _full(self) -> None:
        if not self._told_full:
            self._told_full = True
            log.warning(
                "outbox.full",
                assignment=self.assignment_id,
                limit_bytes=self.budget.max_bytes,
                note="build output waits until the controller takes some",
            )

    async def _append_event(self, kind: EventKind, body: dict[str, Any]) -> None:
        if self._dropped:
            return
        if self._finished:
            raise RuntimeError("the outbox is finished; no more events")
        if kind == "finish":
            self._finished = True
        at = self._written  # the log bytes written before this event
        async with self._io_lock:
            if self._dropped:
                return
            # The log bytes before the event reach the disk before the event does.
            await self._flush_locked()
            if self._events:
                at = max(at, self._events[-1].at)
            event = _Event(len(self._events), at, kind, body)
            if kind == "artifact":
                body["file"] = await asyncio.to_thread(
                    self._link_artifact_sync, event.index, Path(body["file"])
                )
            await self._durably(self._append_event_sync, event)
            self._events.append(event)
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if not self._closing and not self._urgent.is_set():
                # Gather output (one write, one fsync): briefly when the sender waits
                # for it, else until the sender is free again (at most FLUSH_SECONDS),
                # or FLUSH_BYTES gathered.
                await asyncio.sleep(LIVE_FLUSH_SECONDS)
                if not (self._sender_idle.is_set() or self._urgent.is_set() or self._closing):
                    await _first_of(
                        (self._sender_idle, self._urgent), FLUSH_SECONDS - LIVE_FLUSH_SECONDS
                    )
            self._dirty.clear()
            self._urgent.clear()
            try:
                async with self._io_lock:
                    if self._dropped:
                        return
                    await self._flush_locked()
            except Exception:
                if self._closing:
                    log.exception("outbox.flush_failed", assignment=self.assignment_id)
                    return
                log.exception("outbox.flush_error", assignment=self.assignment_id)
                await asyncio.sleep(1.0)
                self._dirty.set()
            if self._closing:
                return

    async def _flush_locked(self) -> None:
        """Move pending output into the spool and fsync it (the io lock is held)."""
        if not self._pending or self._dropped:
            return
        data = bytes(self._pending)  # write() may append more meanwhile
        await self._durably(self._write_log_sync, data)
        del self._pending[: len(data)]
        self._flushed += len(data)
        self._wake.set()

    async def _durably(self, write: Callable[[Any], None], arg: Any) -> None:
        """Run a disk append in a thread; on a disk error (full...) wait and try again,
        so that the build's output waits instead of being lost (unless closing)."""
        told = False
        while True:
            try:
                await asyncio.to_thread(write, arg)
                return
            except OSError as exc:
                if self._closing or self._dropped:
                    raise
                if not told:
                    told = True
                    log.error(
                        "outbox.disk_error",
                        assignment=self.assignment_id,
                        directory=str(self.directory),
                        error=str(exc),
                        note="build output waits; retrying every second",
                    )
                await asyncio.sleep(1.0)

    # -------------------------------------------------------------- delivery

    async def _send_loop(self) -> None:
        try:
            await self._deliver()
        finally:
            self._cancel_window()

    async def _deliver(self) -> None:
        while True:
            try:
                item = await self._next_item()
                if isinstance(item, _Chunk):
                    await self._dispatch(item)
                    continue
                await self._save_state([])  # no chunk in flight: events wait for acks
                if isinstance(item, _Batch):
                    if await self._send_batch(item):
                        return
                    continue
                await self._send(item)
            except _Rejected as exc:
                self._cancel_window()
                await self._reject(exc.error)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or a disk error: keep the outbox, try again a little later.
                log.exception("outbox.sender_error", assignment=self.assignment_id)
                await asyncio.sleep(self.max_backoff)
                continue
            self._progress.events_acked += 1
            if item.kind == "finish":
                await self._complete()
                return

    async def _dispatch(self, chunk: _Chunk) -> None:
        """Record the chunk as in flight (with those already in flight), then send it
        in a task of its own; the sender goes on to the next one meanwhile."""
        await self._save_state([*(c for c, _ in self._window), chunk])
        task = asyncio.create_task(
            self._deliver_chunk(chunk), name=f"outbox:{self.assignment_id}:{chunk.seq}"
        )
        task.add_done_callback(self._chunk_done)
        self._window.append((chunk, task))

    def _chunk_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; _reap raises it again in seq order
        self._wake.set()

    async def _deliver_chunk(self, chunk: _Chunk) -> Any:
        """Deliver one chunk, its same bytes until acknowledged; only a refusal ends it."""
        while True:
            try:
                return await self._send(chunk)
            except (_Rejected, asyncio.CancelledError):
                raise
            except Exception:
                # A bug or a disk error (reading the spool): try again a little later.
                log.exception("outbox.sender_error", assignment=self.assignment_id)
                await asyncio.sleep(self.max_backoff)

    def _reap(self) -> None:
        """Advance past the acknowledged chunks at the head of the window, in seq order
        (a later chunk acknowledged first waits for the ones before it); raises
        _Rejected if the head chunk was refused."""
        while self._window and self._window[0][1].done():
            chunk, task = self._window.popleft()
            answer = task.result()
            self._progress.acked += chunk.size
            self._progress.seq += 1
            self._release(chunk.size)
            if isinstance(answer, dict) and answer.get("cancel") and self.on_cancel:
                self.on_cancel()

    def _cancel_window(self) -> None:
        for _, task in self._window:
            task.cancel()
        self._window.clear()

    async def _send_batch(self, batch: _Batch) -> bool:
        """Deliver consecutive ready events in one request (one by one where the batch
        is refused as a bad request, or not supported); True once the finish is
        acknowledged (the outbox is complete)."""
        try:
            answer = await self._send(batch)
        except _Unbatch:
            for event in batch.events:
                await self._save_state([])
                await self._send(event)
                self._progress.events_acked += 1
                if event.kind == "finish":
                    await self._complete()
                    return True
            return False
        self._progress.events_acked += len(batch.events)
        if batch.events[-1].kind == "finish":
            await self._complete()
            return True
        if isinstance(answer, dict) and answer.get("cancel") and self.on_cancel:
            self.on_cancel()
        return False

    def _ready_batch(self) -> _Batch | None:
        """The consecutive step/finish events whose log bytes are all acknowledged."""
        p = self._progress
        batch: list[_Event] = []
        for event in self._events[p.events_acked : p.events_acked + MAX_BATCH_EVENTS]:
            if event.kind not in _BATCHABLE or event.at > p.acked:
                break
            batch.append(event)
            if event.kind == "finish":
                break
        return _Batch(batch) if batch else None

    async def _next_item(self) -> _Chunk | _Event | _Batch:
        """The next thing to deliver: an event once the log before it is acknowledged
        (with the ready events after it, when batching), else the next log chunk (cut
        at the next event's offset) while the window has room; waits for one."""
        while True:
            self._reap()
            p = self._progress
            window = self._window
            sent = p.acked + sum(c.size for c, _ in window)  # end of the bytes in flight
            limit = self._flushed
            if p.events_acked < len(self._events):
                event = self._events[p.events_acked]
                if event.at <= p.acked and not window:
                    if self.batch_events and event.kind in _BATCHABLE:
                        batch = self._ready_batch()
                        assert batch is not None
                        return batch
                    return event
                limit = min(limit, event.at)
            if limit > sent and len(window) < MAX_INFLIGHT_CHUNKS:
                seq = p.seq + len(window)
                self._resend = [c for c in self._resend if c.seq >= seq]
                if self._resend and self._resend[0].seq == seq and self._resend[0].offset == sent:
                    # Resend exactly the chunk a previous process may have delivered.
                    size = min(self._resend[0].size, self._flushed - sent)
                    return _Chunk(seq, sent, size)
                size = min(MAX_CHUNK, limit - sent)
                if not window or size >= PIPELINE_MIN_BYTES:
                    return _Chunk(seq, sent, size)
            self._wake.clear()
            idle = not window  # waiting for output, not for an acknowledgement
            if idle:
                self._sender_idle.set()
            try:
                await self._wake.wait()
            finally:
                if idle:
                    self._sender_idle.clear()

    async def _send(self, item: _Chunk | _Event | _Batch) -> Any:
        """Deliver one item, retrying network errors and 5xx with capped backoff."""
        base = f"/agent/v1/assignments/{self.assignment_id}"
        data = b""
        if isinstance(item, _Chunk):
            segments = list(self._segments)
            data = await asyncio.to_thread(_read_spool, segments, item.offset, item.size)
        delay = min(0.2, self.max_backoff)
        while True:
            try:
                if isinstance(item, _Chunk):
                    answer = await self.client.call(
                        "POST",
                        f"{base}/log",
                        params={"seq": item.seq, "offset": item.offset},
                        content=data,
                        attempts=1,
                    )
                elif isinstance(item, _Batch):
                    events = [{"kind": e.kind, **e.body} for e in item.events]
                    answer = await self.client.call(
                        "POST", f"{base}/events", json={"events": events}, attempts=1
                    )
                elif item.kind == "step":
                    answer = await self.client.call(
                        "POST", f"{base}/steps", json=item.body, attempts=1
                    )
                elif item.kind == "finish":
                    answer = await self.client.call(
                        "POST", f"{base}/finish", json=item.body, attempts=1
                    )
                elif item.kind == "publication":
                    answer = await self.client.call(
                        "POST", f"{base}/publications", json=item.body, attempts=1
                    )
                else:
                    answer = await self._upload(base, item)
            except ProtocolError as exc:
                if isinstance(item, _Batch) and (
                    exc.status_code in _BAD_EVENT_STATUS or _no_such_route(exc)
                ):
                    if _no_such_route(exc):
                        log.info(
                            "outbox.no_batch_endpoint",
                            assignment=self.assignment_id,
                            note="the controller has no .../events; sending events one by one",
                        )
                        self.batch_events = False
                    raise _Unbatch from exc
                if isinstance(item, _Event) and item.kind == "publication" and _no_such_route(exc):
                    log.warning(
                        "outbox.no_publications_endpoint",
                        assignment=self.assignment_id,
                        note="the controller does not record publications; the build goes on",
                    )
                    return None
                if isinstance(item, _Event) and exc.status_code in _BAD_EVENT_STATUS:
                    log.warning(
                        "outbox.event_refused",
                        assignment=self.assignment_id,
                        kind=item.kind,
                        body=item.body,
                        error=str(exc),
                    )
                    return None
                raise _Rejected(exc) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "outbox.controller_unreachable",
                        assignment=self.assignment_id,
                        error=f"{type(exc).__name__}: {exc}",
                        note="buffering on disk; retrying",
                    )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self.max_backoff, delay * 2)
                continue
            if self._outage:
                self._outage = False
                log.info(
                    "outbox.controller_back",
                    assignment=self.assignment_id,
                    backlog_bytes=self._flushed - self._progress.acked,
                )
            return answer

    async def _upload(self, base: str, event: _Event) -> Any:
        file = Path(event.body["file"])
        if not await asyncio.to_thread(file.is_file):
            log.warning(
                "outbox.artifact_missing",
                assignment=self.assignment_id,
                path=event.body["path"],
                file=str(file),
            )
            return None
        return await self.client.upload(f"{base}/artifacts", {"path": event.body["path"]}, file)

    async def _save_state(self, inflight: list[_Chunk]) -> None:
        """Persist progress (and the chunks in flight, with the one about to be sent),
        then drop spool segments whose bytes are all acknowledged in what was just
        persisted."""
        self._progress.inflight = inflight
        state = self._progress.to_json()
        acked = self._progress.acked
        key = (acked, self._progress.seq, self._progress.events_acked, state["inflight"])
        if key == self._saved:
            return  # nothing changed since it was last persisted
        await asyncio.to_thread(self._write_state_sync, state)
        self._saved = key
        while len(self._segments) > 1 and self._segments[1].start <= acked:
            segment = self._segments.pop(0)
            await asyncio.to_thread(segment.path.unlink, True)

    def _release(self, size: int) -> None:
        size = min(size, self._held)
        self._held -= size
        self.budget.release(size)

    async def _complete(self) -> None:
        async with self._io_lock:
            self._dropped = True
            await asyncio.to_thread(self._remove_sync)
        self._release(self._held)
        self._delivered = True
        self._ended.set()
        if self._flusher is not None:
            self._flusher.cancel()
        log.info("outbox.delivered", assignment=self.assignment_id, log_bytes=self._flushed)

    async def _reject(self, error: ProtocolError) -> None:
        log.warning(
            "outbox.rejected",
            assignment=self.assignment_id,
            error=str(error),
            note="the controller no longer counts this build as ours; dropping its output",
        )
        async with self._io_lock:
            self._dropped = True
            self._pending.clear()
            await asyncio.to_thread(self._remove_sync)
        self._release(self._held)
        self.budget.wake()  # a writer of this build waiting for room gives up
        self._delivered = False
        self._ended.set()
        if self._flusher is not None:
            self._flusher.cancel()
        if self.on_rejected is not None:
            self.on_rejected()

    # ------------------------------------------------------- blocking file I/O

    def _load_sync(self) -> _Loaded:
        directory = self.directory
        if not directory.exists():
            directory.mkdir(parents=True)
            _fsync_dir(directory.parent)
            state = self._progress.to_json()
            _write_json_atomic(directory / STATE_FILE, state)
            return _Loaded(state, [], [], 0, created=True)
        state_path = directory / STATE_FILE
        try:
            state = json.loads(state_path.read_text()) if state_path.exists() else {}
        except ValueError as exc:
            raise OutboxCorrupt(f"{state_path}: {exc}") from exc
        events = _read_events(directory / EVENTS_FILE)
        segments = sorted(
            (
                _Segment(int(m.group(1)), p)
                for p in directory.iterdir()
                if (m := _SEGMENT_RE.match(p.name))
            ),
            key=lambda s: s.start,
        )
        acked = int(state.get("acked_offset", 0))
        flushed = 0
        if segments:
            for prev, nxt in itertools.pairwise(segments):
                if prev.start + prev.path.stat().st_size != nxt.start:
                    raise OutboxCorrupt(f"{directory}: log spool segments are not contiguous")
            last = segments[-1]
            flushed = last.start + last.path.stat().st_size
            if segments[0].start > acked:
                raise OutboxCorrupt(f"{directory}: unacknowledged log bytes are missing")
            while len(segments) > 1 and segments[1].start <= acked:
                segments.pop(0).path.unlink()
            self._log_file_size = last.path.stat().st_size
        if acked > flushed:
            raise OutboxCorrupt(f"{directory}: acknowledged more log than the spool holds")
        if int(state.get("events_acked", 0)) > len(events):
            raise OutboxCorrupt(f"{directory}: acknowledged more events than it holds")
        for event in events:
            event.at = min(event.at, flushed)
        return _Loaded(state, events, segments, flushed, created=False)

    def _write_log_sync(self, data: bytes) -> None:
        """Append to the spool's current segment (a new one when it is full)."""
        if self._log_file is None and self._segments and self._log_file_size < self.segment_bytes:
            self._log_file = self._segments[-1].path.open("ab", buffering=0)  # resumed
        elif self._log_file is None or self._log_file_size >= self.segment_bytes:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            path = self.directory / f"log-{self._flushed:016d}.bin"
            self._log_file = path.open("ab", buffering=0)
            self._log_file_size = 0
            # Appended from this thread while the event loop waits for it (io lock held),
            # before anything else can fail: a retry appends to this segment.
            self._segments.append(_Segment(self._flushed, path))
            _fsync_dir(self.directory)
        _append(self._log_file, data)
        self._log_file_size += len(data)

    def _append_event_sync(self, event: _Event) -> None:
        if self._events_file is None:
            path = self.directory / EVENTS_FILE
            fresh = not path.exists()
            self._events_file = path.open("ab", buffering=0)
            if fresh:
                _fsync_dir(self.directory)
        _append(self._events_file, event.to_line())

    def _link_artifact_sync(self, index: int, file: Path) -> str:
        """A hard link in the outbox (a snapshot that survives the workspace), or the
        workspace file itself where no link can be made (other file system...)."""
        folder = self.directory / ARTIFACTS_DIR
        target = folder / f"{index}-{file.name}"
        try:
            folder.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            os.link(file, target)
            _fsync_dir(folder)
        except OSError:
            return str(file.resolve())
        return str(target)

    def _write_state_sync(self, state: dict[str, Any]) -> None:
        if not self._dropped:
            _write_json_atomic(self.directory / STATE_FILE, state)

    def _close_files_sync(self) -> None:
        for fh in (self._log_file, self._events_file):
            if fh is not None:
                fh.close()
        self._log_file = self._events_file = None

    def _remove_sync(self) -> None:
        self._close_files_sync()
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            _fsync_dir(self.directory.parent)


async def _first_of(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Wait until one of ``events`` is set, at most ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _progress_from_json(state: dict[str, Any], meta: dict[str, Any], fresh: bool) -> _Progress:
    recorded = state.get("inflight") or []
    if isinstance(recorded, dict):
        recorded = [recorded]  # version 1: one chunk in flight at most
    return _Progress(
        acked=int(state.get("acked_offset", 0)),
        seq=int(state.get("next_seq", 0)),
        events_acked=int(state.get("events_acked", 0)),
        inflight=[_Chunk(int(c["seq"]), int(c["offset"]), int(c["size"])) for c in recorded],
        meta=meta if fresh else dict(state.get("meta") or {}),
    )


def _read_events(path: Path) -> list[_Event]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw.rfind(b"\n") + 1
    if complete < len(raw):
        # A torn last line (the process died while appending): it was never acknowledged
        # to the writer, so it is dropped.
        with path.open("r+b") as fh:
            fh.truncate(complete)
            fh.flush()
            os.fsync(fh.fileno())
    events = []
    for number, line in enumerate(raw[:complete].splitlines()):
        try:
            record = json.loads(line)
            events.append(_Event(number, int(record["at"]), record["kind"], dict(record["body"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise OutboxCorrupt(f"{path}:{number + 1}: {exc}") from exc
    return events


def _read_spool(segments: list[_Segment], offset: int, size: int) -> bytes:
    out = bytearray()
    position = offset
    for i, segment in enumerate(segments):
        end = segments[i + 1].start if i + 1 < len(segments) else None
        if end is not None and end <= position:
            continue
        if segment.start > position:
            break
        with segment.path.open("rb") as fh:
            fh.seek(position - segment.start)
            want = offset + size - position
            if end is not None:
                want = min(want, end - position)
            piece = fh.read(want)
        out += piece
        position += len(piece)
        if position >= offset + size:
            break
    if len(out) != size:
        raise OutboxCorrupt(f"log spool: wanted {size} bytes at {offset}, read {len(out)}")
    return bytes(out)


def _append(fh: BinaryIO, data: bytes) -> None:
    """Append and fsync; on failure cut the file back, so a retry leaves no torn bytes."""
    fd = fh.fileno()
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(json.dumps(data, separators=(",", ":")).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutboxReporter:
    """The executor's BuildReporter: everything goes to the build's outbox, on disk;
    nothing here waits for the network, so a build goes on during a controller outage."""

    def __init__(self, outbox: BuildOutbox) -> None:
        self.outbox = outbox

    async def log(self, data: bytes) -> None:
        await self.outbox.write(data)

    async def step_started(self, key: str, attempt: int) -> None:
        await self.outbox.add_step(key, StepState.RUNNING, None, attempt)

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        await self.outbox.add_step(key, state, exit_code, attempt)

    async def upload_artifact(self, rel_path: str, file: Path) -> None:
        await self.outbox.add_artifact(rel_path, file)

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        await self.outbox.add_publication(step_key, publication)
