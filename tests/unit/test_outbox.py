"""The agent's durable outbox, against a fake controller behind httpx.MockTransport
(the seam we own): the fake applies log chunks idempotently by seq, like the real
store, and can be down (connection refused) or lose answers after applying."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from conveyor.agent import outbox as outbox_module
from conveyor.agent import service
from conveyor.agent.client import AgentClient
from conveyor.agent.outbox import MAX_CHUNK, BuildOutbox, OutboxBudget, OutboxReporter
from conveyor.agent.service import Agent, AgentConfig
from conveyor.core.plan import BuildPlan, StagePlan, StepPlan
from conveyor.core.states import StepState

AID = "a-123"


class FakeController:
    """The agent protocol endpoints an outbox uses, with failure knobs."""

    def __init__(self) -> None:
        self.chunks: dict[int, tuple[int, bytes]] = {}
        self.log_size = 0  # contiguous bytes received
        self._next_seq = 0  # first seq not yet in the contiguous log
        #: every event as applied (a resend after a lost answer appears twice),
        #: with the log size when it was applied
        self.applied: list[tuple[str, dict[str, Any], int]] = []
        self.artifacts: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.down = False  # connection refused
        self.lose_answers = False  # apply, then the answer is lost
        self.lose_every = 0  # ... or lose every n-th answer
        self.reject: int | None = None  # answer every request with this status
        self.cancel = False
        self.agent_calls: list[str] = []
        self.offer: dict[str, Any] | None = None  # an assignment the next poll offers
        self.plan: dict[str, Any] | None = None  # ... and its plan, given on start
        self.down_after_start = False
        self.events_route = True  # False: an older controller without POST .../events
        self.bad_keys: set[str] = set()  # step events with these keys are refused (422)
        self.batches: list[int] = []  # events per applied POST .../events
        self.offers: list[dict[str, Any]] = []  # offered by the next poll, all at once
        self.polls: list[dict[str, Any]] = []  # poll bodies
        #: several builds at once: only record each one's requests (assignment -> kinds)
        self.multi = False
        self.per_build: dict[str, list[str]] = {}
        self._count = 0
        #: log chunks whose requests fail (connection refused) while their seq is here
        self.fail_seqs: set[int] = set()
        #: log chunks whose first request is held this long before it is applied
        self.hold_seqs: dict[int, float] = {}
        #: log chunks whose first request is applied, then its answer lost
        self.lose_seqs: set[int] = set()
        self.log_requests: list[int] = []  # the seq of every log request, as it arrived
        self.log_busy = 0  # log requests being handled now...
        self.log_busy_max = 0  # ... and the most at once

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if "/assignments/" not in path:
            return await self._agent_call(request)
        if self.multi:
            aid = path.split("/assignments/")[1].split("/")[0]
            self.per_build.setdefault(aid, []).append(path.rsplit("/", 1)[1])
            if not path.endswith("/start"):
                return httpx.Response(200, json={})
        self.requests.append(path.rsplit("/", 1)[1])
        if path.endswith("/start"):
            return self._start()
        if self.reject is not None:
            return httpx.Response(self.reject, json={"detail": "assignment not found"})
        body = await request.aread()
        answer: dict[str, Any] = {}
        kind = path.rsplit("/", 1)[1]
        if kind == "log":
            seq = int(request.url.params["seq"])
            self.log_requests.append(seq)
            if seq in self.fail_seqs:
                raise httpx.ConnectError("connection refused", request=request)
            self.log_busy += 1
            self.log_busy_max = max(self.log_busy_max, self.log_busy)
            try:
                await asyncio.sleep(self.hold_seqs.pop(seq, 0.001))
            finally:
                self.log_busy -= 1
            offset = int(request.url.params["offset"])
            if seq in self.chunks:
                assert self.chunks[seq] == (offset, body), f"seq {seq} resent with other bytes"
            else:
                # Chunks may arrive out of order (several in flight), like the real
                # store: kept by seq, the log is the contiguous run from seq 0.
                self.chunks[seq] = (offset, body)
                while self._next_seq in self.chunks:
                    at, chunk = self.chunks[self._next_seq]
                    assert at == self.log_size, (
                        f"seq {self._next_seq} at {at}, have {self.log_size}"
                    )
                    self.log_size += len(chunk)
                    self._next_seq += 1
            answer = {"cancel": self.cancel}
        elif kind == "events":
            if not self.events_route:
                return httpx.Response(404, json={"detail": "Not Found"})
            events = json.loads(body)["events"]
            if any(e.get("key") in self.bad_keys for e in events):
                return httpx.Response(422, json={"detail": "events.0.key: refused"})
            self.batches.append(len(events))
            entries = []
            for event in events:
                event = dict(event)
                name = "steps" if event.pop("kind") == "step" else "finish"
                entries.append((name, event, self.log_size))
            if self.applied[-len(entries) :] != entries:  # else: a resent batch, once
                self.applied += entries
        elif kind in ("steps", "finish") and json.loads(body).get("key") in self.bad_keys:
            return httpx.Response(422, json={"detail": "key: refused"})
        elif kind == "artifacts":
            self.artifacts[request.url.params["path"]] = body
            self.applied.append(("artifact", {"path": request.url.params["path"]}, self.log_size))
        else:
            self.applied.append((kind, json.loads(body), self.log_size))
        self._count += 1
        if kind == "log" and int(request.url.params["seq"]) in self.lose_seqs:
            self.lose_seqs.discard(int(request.url.params["seq"]))
            raise httpx.ReadError("connection reset before the answer", request=request)
        if self.lose_answers or (self.lose_every and self._count % self.lose_every == 0):
            raise httpx.ReadError("connection reset before the answer", request=request)
        return httpx.Response(200, json=answer)

    async def _agent_call(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.agent_calls.append(path)
        if path.endswith("/register"):
            return httpx.Response(
                200, json={"agent_id": 1, "heartbeat_interval": 0.2, "poll_timeout": 0.2}
            )
        if path.endswith("/poll"):
            self.polls.append(json.loads(await request.aread()))
            if self.offers:
                offers, self.offers = self.offers, []
                return httpx.Response(200, json={"assignments": offers})
            if self.offer is not None:
                offer, self.offer = self.offer, None
                return httpx.Response(200, json={"assignments": [offer]})
            await asyncio.sleep(0.1)
        return httpx.Response(200, json={})

    def _start(self) -> httpx.Response:
        assert self.plan is not None
        if self.down_after_start:
            self.down = True
        return httpx.Response(
            200,
            json={"build_id": 7, "job": "job", "number": 1, "parameters": {}, "plan": self.plan},
        )

    @property
    def log(self) -> bytes:
        data = b""
        for seq in sorted(self.chunks):
            offset, chunk = self.chunks[seq]
            assert offset == len(data)
            data += chunk
        return data

    def events(self) -> list[tuple[str, dict[str, Any], int]]:
        """Applied events, a resend of the one just applied counted once."""
        out: list[tuple[str, dict[str, Any], int]] = []
        for event in self.applied:
            if out and out[-1][:2] == event[:2]:
                continue
            out.append(event)
        return out


@pytest.fixture
def fake() -> FakeController:
    return FakeController()


@pytest.fixture
async def client(fake: FakeController) -> AsyncIterator[AgentClient]:
    c = AgentClient("http://controller", "token", httpx.MockTransport(fake.handler), 0.05)
    c.agent_id = 1
    yield c
    await c.close()


def make(root: Path, client: AgentClient, **kw: Any) -> BuildOutbox:
    kw.setdefault("max_backoff", 0.05)
    return BuildOutbox(root, AID, client, **kw)


async def eventually(predicate: Callable[[], object], bound: float = 10.0) -> None:
    give_up = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < give_up, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("batch", [False, True])
async def test_log_and_events_arrive_in_order_exactly_once(
    tmp_path: Path, fake: FakeController, client: AgentClient, batch: bool
) -> None:
    fake.lose_every = 3  # a third of the answers are lost after the request was applied
    outbox = make(tmp_path / "outbox", client, batch_events=batch)
    await outbox.open()
    outbox.start()
    reporter = OutboxReporter(outbox)
    expected = b""
    expected_events: list[tuple[str, dict[str, Any], int]] = []
    for step in range(5):
        key = f"s{step}"
        await reporter.step_started(key, 1)
        expected_events.append(
            ("steps", {"key": key, "state": "running", "exit_code": None, "attempt": 1}, 0)
        )
        for line in range(40):
            data = f"step {step} line {line}\n".encode()
            await reporter.log(data)
            expected += data
            if line % 7 == 0:
                await asyncio.sleep(0.02)
        await reporter.step_finished(key, StepState.SUCCEEDED, 0, 1)
        expected_events.append(
            ("steps", {"key": key, "state": "succeeded", "exit_code": 0, "attempt": 1}, 0)
        )
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 20) is True

    assert fake.log == expected
    # Each event arrived after exactly the log bytes written before it, in order.
    got = fake.events()
    assert [(kind, body) for kind, body, _ in got] == [
        *[(k, b) for k, b, _ in expected_events],
        ("finish", {"result": "succeeded", "cause": None}),
    ]
    offsets = [size for _, _, size in got]
    per_step = len(expected) // 5
    assert offsets == [
        *[o for step in range(5) for o in (step * per_step, (step + 1) * per_step)],
        len(expected),
    ]
    assert not (tmp_path / "outbox" / AID).exists()


async def test_the_writer_never_waits_for_the_network(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.down = True
    outbox = make(tmp_path / "outbox", client, max_backoff=outbox_module.MAX_BACKOFF)
    await outbox.open()
    outbox.start()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "app.txt").write_bytes(b"artifact bytes")
    reporter = OutboxReporter(outbox)

    async def build() -> None:
        await reporter.step_started("s1", 1)
        for i in range(100):
            await reporter.log(f"line {i}\n".encode())
        await reporter.upload_artifact("dist/app.txt", workspace / "app.txt")
        await reporter.step_finished("s1", StepState.SUCCEEDED, 0, 1)
        await outbox.finish("succeeded", None)

    await asyncio.wait_for(build(), 2)  # the whole "build" ran during the outage
    (workspace / "app.txt").unlink()  # a later step cleaned it: the outbox kept a link
    await asyncio.sleep(1.5)  # the sender's backoff grows to its cap meanwhile
    assert fake.log == b"" and outbox.delivered is None
    fake.down = False
    back = time.monotonic()
    assert await asyncio.wait_for(outbox.wait(), 10) is True
    assert time.monotonic() - back < outbox_module.MAX_BACKOFF + 0.5
    assert fake.log == b"".join(f"line {i}\n".encode() for i in range(100))
    assert [kind for kind, _, _ in fake.events()] == ["steps", "artifact", "steps", "finish"]
    assert fake.artifacts == {"dist/app.txt": b"artifact bytes"}


async def test_chunks_are_at_most_256k_and_cut_at_events(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    big = bytes(range(256)) * 4096  # 1 MiB
    await outbox.write(big)
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.write(b"tail\n")
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 20)
    sizes = [len(chunk) for _, chunk in (fake.chunks[s] for s in sorted(fake.chunks))]
    assert max(sizes) <= MAX_CHUNK
    assert sum(sizes[:-1]) == len(big)  # a chunk ends where the step event was emitted
    assert fake.log == big + b"tail\n"
    assert [size for _, _, size in fake.events()] == [len(big), len(big) + 5]


async def test_output_is_flushed_to_disk_in_batches(
    tmp_path: Path, fake: FakeController, client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[int] = []
    original = BuildOutbox._write_log_sync

    def counting(self: BuildOutbox, data: bytes) -> None:
        flushes.append(len(data))
        original(self, data)

    monkeypatch.setattr(BuildOutbox, "_write_log_sync", counting)
    fake.down = True
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    started = time.monotonic()
    for i in range(500):
        await outbox.write(b"x" * 99 + b"\n")
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    elapsed = time.monotonic() - started
    assert sum(flushes) == 500 * 100  # on disk within a flush interval
    assert len(flushes) <= elapsed / outbox_module.FLUSH_SECONDS + 2
    spool = b"".join(p.read_bytes() for p in sorted((tmp_path / "outbox" / AID).glob("log-*")))
    assert spool == (b"x" * 99 + b"\n") * 500
    await outbox.close()


async def test_a_new_process_resumes_where_the_last_one_stopped(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    root = tmp_path / "outbox"
    first = make(root, client, meta={"build_id": 7, "workspace": "/ws/job-7"})
    await first.open()
    first.start()
    await first.add_step("s1", StepState.RUNNING, None, 1)
    part1 = b"".join(f"first {i}\n".encode() for i in range(50))
    await first.write(part1)
    await eventually(lambda: fake.log == part1)
    # The controller applies the next chunk but its answers are lost; then the agent
    # process goes away before it learns that the chunk arrived.
    fake.lose_answers = True
    await first.write(b"in flight\n")
    await eventually(lambda: fake.log == part1 + b"in flight\n")
    await asyncio.sleep(0.1)  # resent (identical) a few times meanwhile
    fake.down = True
    await first.close()
    assert first.delivered is None and (root / AID).is_dir()

    fake.lose_answers = False
    fake.down = False
    second = make(root, client)
    await second.open()
    assert not second.finished
    assert second.meta == {"build_id": 7, "workspace": "/ws/job-7"}
    # More output than the chunk in flight: the resent chunk must be that chunk exactly.
    await second.write(b"after restart\n")
    await second.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await second.finish("failed", "agent restarted")
    second.start()
    assert await asyncio.wait_for(second.wait(), 10) is True
    assert fake.log == part1 + b"in flight\nafter restart\n"
    assert [(body.get("state"), size) for _, body, size in fake.events()] == [
        ("running", 0),
        ("succeeded", len(fake.log)),
        (None, len(fake.log)),
    ]
    assert not (root / AID).exists()


async def test_resume_with_deleted_segments_and_unsent_events(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    root = tmp_path / "outbox"
    first = make(root, client, segment_bytes=4096)
    await first.open()
    first.start()
    for i in range(5):
        await first.write(bytes([65 + i]) * 4096)
        await first.add_step(f"s{i}", StepState.SUCCEEDED, 0, 1)  # flushes: one segment each
    await eventually(lambda: len(fake.events()) == 5)
    await first.add_step("s5", StepState.RUNNING, None, 1)  # persists acked = 20 KiB
    await eventually(lambda: len(fake.events()) == 6)
    assert [p.name for p in sorted((root / AID).glob("log-*.bin"))] == [f"log-{16384:016d}.bin"]
    fake.down = True
    await first.write(b"unsent\n")
    await first.add_step("s5", StepState.FAILED, 2, 1)
    await first.close()

    fake.down = False
    second = make(root, client, segment_bytes=4096)
    await second.open()
    await second.finish("failed", None)
    second.start()
    assert await asyncio.wait_for(second.wait(), 10)
    assert fake.log == b"".join(bytes([65 + i]) * 4096 for i in range(5)) + b"unsent\n"
    assert [body.get("key") for _, body, _ in fake.events()] == [
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
        "s5",
        None,
    ]


async def test_a_full_outbox_blocks_the_writer_until_delivery_frees_room(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.down = True
    budget = OutboxBudget(1000)
    outbox = make(tmp_path / "outbox", client, budget=budget)
    await outbox.open()
    outbox.start()
    with capture_logs() as logs:
        await asyncio.wait_for(outbox.write(b"a" * 800), 1)
        blocked = asyncio.create_task(outbox.write(b"b" * 400))
        more = asyncio.create_task(outbox.write(b"c" * 400))
        await asyncio.sleep(0.5)
        assert not blocked.done() and not more.done()  # waiting, nothing dropped
        fake.down = False
        await asyncio.wait_for(asyncio.gather(blocked, more), 10)
    assert [e["event"] for e in logs].count("outbox.full") == 1  # said once
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 10)
    assert fake.log == b"a" * 800 + b"b" * 400 + b"c" * 400
    assert budget.used == 0


async def test_refusal_stops_delivery_and_drops_the_outbox(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    rejected: list[bool] = []
    outbox = make(tmp_path / "outbox", client, on_rejected=lambda: rejected.append(True))
    await outbox.open()
    outbox.start()
    await outbox.write(b"hello\n")
    await eventually(lambda: fake.log == b"hello\n")
    fake.reject = 409  # re-assigned elsewhere: no longer ours
    await outbox.write(b"more\n")
    assert await asyncio.wait_for(outbox.wait(), 10) is False
    assert rejected == [True]
    assert not (tmp_path / "outbox" / AID).exists()
    sent = len(fake.requests)
    await outbox.write(b"after\n")  # the build winds down: accepted and dropped
    await outbox.add_step("s1", StepState.CANCELLED, None, 1)
    await outbox.finish("cancelled", None)
    await asyncio.sleep(0.3)
    assert len(fake.requests) == sent
    assert fake.log == b"hello\n"
    await outbox.close()


async def test_cancel_in_a_log_answer_reaches_the_agent(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    cancels: list[bool] = []
    outbox = make(tmp_path / "outbox", client, on_cancel=lambda: cancels.append(True))
    await outbox.open()
    outbox.start()
    fake.cancel = True
    await outbox.write(b"x\n")
    await eventually(lambda: cancels)
    await outbox.finish("cancelled", None)
    assert await asyncio.wait_for(outbox.wait(), 10)


async def test_a_bad_event_is_skipped_not_fatal(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    fake.reject = 422
    await outbox.add_step("x" * 300, StepState.RUNNING, None, 1)
    await eventually(lambda: fake.requests == ["steps"])
    fake.reject = None
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 10) is True


async def test_the_agent_delivers_outboxes_left_by_an_earlier_process(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    workdir = tmp_path / "agent"
    workspace = workdir / "workspace" / "job-7"
    workspace.mkdir(parents=True)
    left = make(workdir / "outbox", client, meta={"build_id": 7, "workspace": str(workspace)})
    fake.down = True
    await left.open()
    left.start()
    await left.add_step("s1", StepState.RUNNING, None, 1)
    await left.write(b"partial output")
    await left.close()  # the agent process died while the build ran
    fake.down = False

    agent = Agent(AgentConfig(url="http://controller", token="t", workdir=workdir), client)
    runner = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: any(kind == "finish" for kind, _, _ in fake.events()))
        await eventually(lambda: not (workdir / "outbox" / AID).exists() and not workspace.exists())
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 20)
    assert fake.log.startswith(b"partial output\n==> the agent restarted")
    kind, body, size = fake.events()[-1]
    assert (kind, body["result"], size) == ("finish", "failed", len(fake.log))
    assert body["cause"] == "the agent restarted while the build was running"


async def test_a_disk_error_makes_output_wait_not_tear(
    tmp_path: Path, fake: FakeController, client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    disk_full = True

    def fsync(fd: int) -> None:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    monkeypatch.setattr(os, "fsync", fsync)
    await outbox.write(b"first line\n")  # pending; the flusher fails and retries
    event = asyncio.create_task(outbox.add_step("s1", StepState.SUCCEEDED, 0, 1))
    await asyncio.sleep(1.5)
    assert not event.done()  # an event waits for the log before it to be on disk
    disk_full = False
    await asyncio.wait_for(event, 5)
    await outbox.write(b"second line\n")
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 10)
    assert fake.log == b"first line\nsecond line\n"  # the failed attempts left no bytes
    assert [size for _, _, size in fake.events()] == [11, 23]


async def test_an_agent_stopped_during_an_outage_leaves_the_outbox_to_the_next_one(
    tmp_path: Path, fake: FakeController, client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "STOP_DELIVERY_SECONDS", 0.5)
    step = StepPlan(key="s1", stage="build", kind="sh", name="sh", script="echo built")
    plan = BuildPlan(stages=[StagePlan(key="build", name="build", steps=[step])])
    fake.plan = plan.model_dump(mode="json")
    fake.offer = {"assignment_id": AID, "build_id": 7}
    fake.down_after_start = True  # the build runs during an outage
    workdir = tmp_path / "agent"
    config = AgentConfig(url="http://controller", token="t", workdir=workdir)

    first = Agent(config, client)
    runner = asyncio.create_task(first.run())
    outbox_dir = workdir / "outbox" / AID
    events = outbox_dir / "events.jsonl"
    # The build ran to its end although nothing could be sent.
    await eventually(lambda: events.exists() and b'"finish"' in events.read_bytes())
    first.stop()
    await asyncio.wait_for(runner, 20)
    assert outbox_dir.is_dir() and (workdir / "workspace" / "job-7").is_dir()
    assert fake.log == b""

    fake.down = False
    second_client = AgentClient(
        "http://controller", "token", httpx.MockTransport(fake.handler), 0.05
    )
    second = Agent(config, second_client)
    runner = asyncio.create_task(second.run())
    try:
        await eventually(lambda: not outbox_dir.exists())
        await eventually(lambda: not (workdir / "workspace" / "job-7").exists())
    finally:
        second.stop()
        await asyncio.wait_for(runner, 20)
    assert b"built\n" in fake.log
    assert [(kind, body.get("state") or body.get("result")) for kind, body, _ in fake.events()] == [
        ("steps", "running"),
        ("steps", "succeeded"),
        ("finish", "succeeded"),
    ]


# ------------------------------------------------------------------ batched events


async def test_ready_events_go_in_one_request_with_the_finish_last(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.down = True
    outbox = make(tmp_path / "outbox", client, batch_events=True)
    await outbox.open()
    outbox.start()
    await outbox.write(b"==> step\n")
    await outbox.add_step("s1", StepState.RUNNING, None, 1)
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.add_step("s2", StepState.SKIPPED, None, 0)
    await outbox.finish("succeeded", None)
    fake.down = False
    assert await asyncio.wait_for(outbox.wait(), 10) is True
    assert fake.requests == ["log", "events"] and fake.batches == [4]
    assert [(kind, body.get("state"), size) for kind, body, size in fake.applied] == [
        ("steps", "running", 9),
        ("steps", "succeeded", 9),
        ("steps", "skipped", 9),
        ("finish", None, 9),
    ]
    assert fake.applied[-1][1] == {"result": "succeeded", "cause": None}
    assert not (tmp_path / "outbox" / AID).exists()


async def test_a_batch_stops_at_unsent_log_and_at_artifacts(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.down = True
    outbox = make(tmp_path / "outbox", client, batch_events=True)
    await outbox.open()
    outbox.start()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_bytes(b"a")
    await outbox.add_step("s1", StepState.RUNNING, None, 1)
    await outbox.write(b"output\n")
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.add_step("s2", StepState.RUNNING, None, 1)
    await outbox.add_artifact("a.txt", workspace / "a.txt")
    await outbox.add_step("s2", StepState.SUCCEEDED, 0, 1)
    await outbox.finish("succeeded", None)
    fake.down = False
    assert await asyncio.wait_for(outbox.wait(), 10) is True
    assert fake.requests == ["events", "log", "events", "artifacts", "events"]
    assert fake.batches == [1, 2, 2]
    assert [size for _, _, size in fake.applied] == [0, 7, 7, 7, 7, 7]
    assert fake.artifacts == {"a.txt": b"a"}


async def test_a_controller_without_the_batch_endpoint_gets_single_events(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.events_route = False
    outbox = make(tmp_path / "outbox", client, batch_events=True)
    await outbox.open()
    outbox.start()
    await outbox.add_step("s1", StepState.RUNNING, None, 1)
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 10) is True  # not rejected
    assert fake.requests[0] == "events" and "events" not in fake.requests[1:]
    assert [(kind, body.get("state")) for kind, body, _ in fake.events()] == [
        ("steps", "running"),
        ("steps", "succeeded"),
        ("finish", None),
    ]
    assert not outbox.batch_events


async def test_a_refused_batch_is_resent_event_by_event_skipping_the_bad_one(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.down = True
    fake.bad_keys = {"bad"}
    outbox = make(tmp_path / "outbox", client, batch_events=True)
    await outbox.open()
    outbox.start()
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.add_step("bad", StepState.SUCCEEDED, 0, 1)
    await outbox.add_step("s2", StepState.SUCCEEDED, 0, 1)
    await outbox.finish("succeeded", None)
    fake.down = False
    with capture_logs() as logs:
        assert await asyncio.wait_for(outbox.wait(), 10) is True
    assert [body.get("key") for _, body, _ in fake.applied] == ["s1", "s2", None]
    assert [e["event"] for e in logs if e["event"] == "outbox.event_refused"] == [
        "outbox.event_refused"
    ]
    assert outbox.batch_events  # still batching: the endpoint exists


async def test_a_lost_batch_answer_resends_the_same_batch(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    outbox = make(tmp_path / "outbox", client, batch_events=True)
    await outbox.open()
    await outbox.add_step("s1", StepState.RUNNING, None, 1)
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    fake.lose_answers = True
    outbox.start()
    await eventually(lambda: len(fake.batches) >= 2)
    fake.lose_answers = False
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 10) is True
    assert fake.batches[:2] == [2, 2] and fake.batches[-1] == 1
    assert [(k, b.get("state")) for k, b, _ in fake.applied[-3:]] == [
        ("steps", "running"),
        ("steps", "succeeded"),
        ("finish", None),
    ]


# ------------------------------------------------------------------ the agent's slots


async def test_assignments_beyond_the_free_executors_wait_on_the_agent(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    """A poll asks to start only with a free executor; whatever comes beyond the free
    executors (started or not) waits in the agent's queue: nothing is dropped."""
    step = StepPlan(key="s1", stage="build", kind="sh", name="sh", script="sleep 0.3")
    plan = BuildPlan(stages=[StagePlan(key="build", name="build", steps=[step])]).model_dump(
        mode="json"
    )
    fake.plan = plan

    def started(n: int) -> dict[str, Any]:
        return {"assignment_id": f"a-{n}", "build_id": n, "job": "job", "number": n,
                "parameters": {}, "plan": plan}  # fmt: skip

    fake.multi = True
    fake.offers = [started(1), started(2), {"assignment_id": "a-3", "build_id": 3}]
    config = AgentConfig(url="http://controller", token="t", workdir=tmp_path / "w", executors=1)
    agent = Agent(config, client)
    runner = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: len(fake.polls) >= 2)
        assert fake.polls[0]["start"] is True
        # One running, two queued: no start asked; all three reported as ours.
        assert "start" not in fake.polls[1]
        assert set(fake.polls[1]["running"]) == {"a-1", "a-2", "a-3"}
        await eventually(lambda: agent.running == {}, bound=20)
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 20)
    # The started ones never called /start; the other did, when its turn came.
    assert [r for r in fake.per_build["a-1"] if r == "start"] == []
    assert [r for r in fake.per_build["a-2"] if r == "start"] == []
    assert fake.per_build["a-3"][0] == "start"
    for aid in ("a-1", "a-2", "a-3"):
        assert fake.per_build[aid][-1] == "finish"


# ----------------------------------------------------------- chunks in flight


def _numbered(count: int, width: int = 100) -> bytes:
    """``count`` distinct lines of ``width`` bytes: a reordered or doubled chunk shows."""
    return b"".join(f"{i:0{width - 1}d}\n".encode() for i in range(count))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """64 KiB chunks, a second one in flight from 16 KiB: a few hundred KiB is a flood."""
    monkeypatch.setattr(outbox_module, "MAX_CHUNK", 64 * 1024)
    monkeypatch.setattr(outbox_module, "PIPELINE_MIN_BYTES", 16 * 1024)
    return 64 * 1024


async def test_a_flood_goes_with_two_chunks_in_flight(
    tmp_path: Path, fake: FakeController, client: AgentClient, small_chunks: int
) -> None:
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    data = _numbered(10_000)  # ~1 MB: about 15 chunks
    for i in range(0, len(data), 100_000):
        await outbox.write(data[i : i + 100_000])
    fake.hold_seqs = {seq: 0.05 for seq in range(20)}  # each takes a while to store
    outbox.start()
    await outbox.add_step("s1", StepState.SUCCEEDED, 0, 1)
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 20) is True
    assert fake.log == data
    assert fake.log_busy_max == outbox_module.MAX_INFLIGHT_CHUNKS
    # The events still came after all the log before them.
    assert [size for _, _, size in fake.events()] == [len(data), len(data)]


@pytest.mark.parametrize("fault", ["refused", "answer lost"])
async def test_a_failed_second_chunk_in_flight_is_resent_and_the_log_is_whole(
    tmp_path: Path, fake: FakeController, client: AgentClient, small_chunks: int, fault: str
) -> None:
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    data = _numbered(3000)  # ~300 KB: 5 chunks
    await outbox.write(data)
    # Chunk 0 is slow to store, so chunk 1 is sent meanwhile, and fails: refused before
    # it is stored, or stored and its answer lost (the agent cannot tell which).
    fake.hold_seqs = {0: 0.3}
    if fault == "refused":
        fake.fail_seqs = {1}
    else:
        fake.lose_seqs = {1}
    outbox.start()
    await eventually(lambda: 0 in fake.chunks)
    await eventually(lambda: fake.log_requests.count(1) >= 2)  # chunk 1 is being resent
    if fault == "refused":
        await asyncio.sleep(0.2)
        # Nothing past the acknowledged chunk 0 counts as delivered.
        assert outbox.acked_offset == small_chunks
        state = json.loads((tmp_path / "outbox" / AID / "state.json").read_text())
        assert state["acked_offset"] <= small_chunks
        assert [c["seq"] for c in state["inflight"]] in ([1], [1, 2])
        fake.fail_seqs = set()
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 20) is True
    assert fake.log == data  # exactly once, in order
    assert fake.events() == [("finish", {"result": "succeeded", "cause": None}, len(data))]


async def test_a_new_process_resends_every_chunk_that_was_in_flight(
    tmp_path: Path, fake: FakeController, client: AgentClient, small_chunks: int
) -> None:
    root = tmp_path / "outbox"
    first = make(root, client)
    await first.open()
    part1 = _numbered(1500)  # ~150 KB: two full chunks and a bit
    await first.write(part1)
    fake.lose_answers = True  # applied, never acknowledged
    first.start()
    await eventually(lambda: {0, 1} <= set(fake.chunks))
    await asyncio.sleep(0.1)
    fake.down = True
    await first.close()
    state = json.loads((root / AID / "state.json").read_text())
    assert state["acked_offset"] == 0
    assert [c["seq"] for c in state["inflight"]] == [0, 1]

    fake.lose_answers = fake.down = False
    second = make(root, client)
    await second.open()
    part2 = _numbered(500)
    await second.write(part2)  # more output: the resent chunks must be the same bytes
    await second.finish("succeeded", None)
    second.start()
    assert await asyncio.wait_for(second.wait(), 10) is True
    assert fake.log == part1 + part2


async def test_a_flood_is_written_to_disk_while_the_writer_goes_on_up_to_a_bound(
    tmp_path: Path, fake: FakeController, client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = BuildOutbox._write_log_sync

    def slow_disk(self: BuildOutbox, data: bytes) -> None:
        time.sleep(0.3)  # write + fsync of a slow disk
        original(self, data)

    monkeypatch.setattr(BuildOutbox, "_write_log_sync", slow_disk)
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    piece = b"y" * (64 * 1024 - 1) + b"\n"
    started = time.monotonic()
    for _ in range(48):  # 3 MiB: below MAX_PENDING_BYTES, the writer never waits
        await outbox.write(piece)
    assert time.monotonic() - started < 0.25
    for _ in range(48):  # 3 MiB more: past the bound the writer waits for the disk
        await outbox.write(piece)
    assert time.monotonic() - started >= 0.3
    assert len(outbox._pending) < outbox_module.MAX_PENDING_BYTES + len(piece)
    await outbox.finish("succeeded", None)
    assert await asyncio.wait_for(outbox.wait(), 20) is True
    assert fake.log == piece * 96


def test_a_state_file_of_the_previous_version_is_read_back() -> None:
    """Version 1 (one chunk in flight at most) left by an older agent: its chunk is
    resent exactly as recorded."""
    state = {
        "version": 1,
        "acked_offset": 100,
        "next_seq": 3,
        "events_acked": 1,
        "inflight": {"seq": 3, "offset": 100, "size": 50},
    }
    progress = outbox_module._progress_from_json(state, {}, fresh=False)
    assert (progress.acked, progress.seq, progress.events_acked) == (100, 3, 1)
    assert progress.inflight == [outbox_module._Chunk(3, 100, 50)]
    assert outbox_module._progress_from_json({"inflight": None}, {}, fresh=False).inflight == []
