"""`appliance worker` as a real process against a real Redis: claims, drains, crashes, outages, fencing.

Each test starts `python -m appliance worker ...` with short lease/heartbeat settings in its environment, listens
on its own sd_notify socket (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and drives it with real signals.
Waits are bounded by generous deadlines; nothing asserts on how long something took.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from appliance.localredis import LocalRedis, free_port
from appliance.queue import Capabilities, JobStatus, Queue, QueueSettings, WorkerSession
from appliance.queue.events import EventKind
from appliance.queue.registry import drain_key
from appliance.standins import process as standin_process

MACHINE = "mtest"
#: Short timings so leases expire and reapers run within a test; the heartbeat stays well below lease/2.
QUEUE_ENV = {
    "APPLIANCE_QUEUE__LEASE_MS": "2000",
    "APPLIANCE_QUEUE__HEARTBEAT_INTERVAL_MS": "300",
    "APPLIANCE_QUEUE__REAPER_INTERVAL_MS": "200",
    "APPLIANCE_QUEUE__RETRY_BASE_MS": "100",
}
DEADLINE_S = 30.0


def queue_settings(env: dict[str, str]) -> QueueSettings:
    prefix = "APPLIANCE_QUEUE__"
    return QueueSettings(**{k[len(prefix) :].lower(): int(v) for k, v in env.items() if k.startswith(prefix)})


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            value = await check()
        except RedisConnectionError:  # our own client, across a Redis restart: ask again
            value = None
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class NotifySocket:
    """The receiving end of sd_notify: collects every datagram the worker sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def poll(self) -> list[list[str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode().split("\n"))

    def lines(self) -> list[str]:
        return [line for message in self.poll() for line in message]

    async def wait_line(self, predicate: Callable[[str], bool], what: str) -> str:
        async def found() -> str | None:
            return next((line for line in self.lines() if predicate(line)), None)

        return str(await eventually(found, what))

    def close(self) -> None:
        self.sock.close()


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, notify: NotifySocket) -> None:
        self.args = args
        self.log_path = log_path
        self.notify = notify
        self.log_file = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "worker", *args],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self) -> None:
        async def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log}")
            return "READY=1" in self.notify.lines()

        await eventually(check, "READY=1")

    async def status(self, text: str) -> str:
        return await self.notify.wait_line(
            lambda line: line.startswith("STATUS=") and text in line, f"STATUS containing {text!r}"
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def exit_code(self, timeout_s: float = DEADLINE_S) -> int:
        async def check() -> bool:
            return self.proc.poll() is not None

        await eventually(check, "the worker to exit", timeout_s)
        return int(self.proc.returncode)

    async def logged(self, text: str) -> None:
        async def check() -> bool:
            return text in self.log

        await eventually(check, f"{text!r} in the worker log")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


class Harness:
    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("APPLIANCE_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))
        }
        self.env.update(QUEUE_ENV)
        self.env.update(
            {
                "APPLIANCE_REDIS_URL": redis_url,
                "APPLIANCE_MACHINE__ID": MACHINE,
                "APPLIANCE_STORAGE__LOCAL_DIR": str(tmp_path / "outputs"),
                "APPLIANCE_WORKER__CLAIM_TIMEOUT_S": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.workers: list[WorkerProcess] = []
        self.queue: Queue | None = None

    async def connect(self) -> Queue:
        self.queue = await Queue.connect(self.redis_url, settings=queue_settings(self.env))
        return self.queue

    def start(self, *args: str, **env: str) -> WorkerProcess:
        n = len(self.workers)
        notify = NotifySocket(self.tmp_path / f"notify{n}.sock")
        full_env = {**self.env, "NOTIFY_SOCKET": str(notify.path), **env}
        worker = WorkerProcess(list(args), full_env, self.tmp_path / f"worker{n}.log", notify)
        self.workers.append(worker)
        return worker

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
            worker.notify.close()
            print(f"--- worker {worker.args} log ---\n{worker.log}")
        if self.queue is not None:
            await self.queue.close()


async def job_in(queue: Queue, job_id: str, *statuses: JobStatus) -> Any:
    async def check() -> Any:
        job = await queue.get(job_id)
        return job if job is not None and job.status in statuses else None

    return await eventually(check, f"job {job_id} to be {'/'.join(s.value for s in statuses)}")


async def running(queue: Queue, job_id: str) -> Any:
    """The job once a worker holds it (the worker starts its connector call right after the claim)."""

    async def check() -> Any:
        job = await queue.get(job_id)
        return job if job is not None and job.status in (JobStatus.CLAIMED, JobStatus.RUNNING) else None

    return await eventually(check, f"job {job_id} to be running")


async def completed_events(queue: Queue, job_id: str) -> int:
    events = await queue.events.window(0, 10**9)  # a batch's completions share an entry: its events
    return sum(1 for e in events if e.kind is EventKind.COMPLETED and e.job == job_id)


async def seen_after(queue: Queue, worker_id: str, after_ms: int) -> bool:
    """The worker heartbeated after `after_ms` (server time): it had claim opportunities since then."""
    score = await queue.client.zscore(queue.keys.workers_seen, worker_id)
    return score is not None and int(score) > after_ms


# --- the normal path --------------------------------------------------------------------------------------------


async def test_jobs_complete_and_status_is_published(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    # Per-job lines are DEBUG (a busy worker at INFO writes none; see test_hot_path.py).
    worker = harness.start("--connector", "echo", "--index", "0", APPLIANCE_LOG_LEVEL="DEBUG")
    await worker.ready()
    jobs = [await q.submit({"service": "echo", "payload": {"n": i, "delay": 0.2}}) for i in range(3)]
    out = await q.submit({"service": "echo", "payload": {"output": {"name": "hello.txt", "text": "hi"}}})
    for job in [*jobs, out]:
        done = await job_in(q, job.id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
        assert done.status is JobStatus.COMPLETED, done.errors
        assert done.worker_id == f"{MACHINE}-echo0"
    assert [(await q.get(j.id)).result["echo"]["n"] for j in jobs] == [0, 1, 2]  # type: ignore[union-attr]
    stored = (await q.get(out.id)).result["outputs"][0]  # type: ignore[union-attr]
    assert await asyncio.to_thread(Path(stored["path"]).read_text) == "hi"
    await worker.status("idle, 4 jobs done")
    await worker.logged(f"job {out.id}: completed after ")  # with its duration
    # Its first answer is the start, not a recovery: no warning about answering "again".
    assert "echo answers; taking jobs" in worker.log and "answers again" not in worker.log, worker.log
    record = json.loads(await q.client.hget(q.keys.worker_status, f"{MACHINE}-echo0"))
    assert record["connector"] == "echo" and record["service_healthy"] is True and record["concurrency"] == 1
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    assert "STOPPING=1" in worker.notify.lines()
    # The last STATUS= (which systemd keeps for a stopped unit) says how it ended, not "draining".
    assert [x for x in worker.notify.lines() if x.startswith("STATUS=")][
        -1
    ] == "STATUS=stopped: 4 jobs done, 0 failed"
    assert await q.client.hget(q.keys.worker_status, f"{MACHINE}-echo0") is None  # deregistered


async def test_bad_arguments_are_one_line_errors(harness: Harness) -> None:
    for args, expected in (
        (["--slot", "nonsense"], "is not gpu<N>"),
        (["--connector", "nosuch"], "unknown connector"),
        (["--gpu", "0", "--connector", "echo"], "exactly one of"),
    ):
        worker = harness.start(*args)
        assert await worker.exit_code() == 2
        lines = worker.log.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("appliance: error:") and expected in lines[0], lines


# --- stopping ---------------------------------------------------------------------------------------------------


async def test_sigterm_hands_back_a_job_that_outlasts_the_grace(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0", APPLIANCE_WORKER__DRAIN_GRACE_S="0.5")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 60}})
    await running(q, job.id)
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    back = await q.get(job.id)
    assert back is not None and back.status is JobStatus.PENDING
    assert back.attempts == 0 and back.errors == []  # a hand-back is not a failed attempt
    session = await WorkerSession.open(q, "mtest-other", Capabilities(services=["echo"]))
    claimed = await session.claim()
    assert claimed is not None and claimed.job.id == job.id and claimed.attempt == 1
    await session.close()


async def test_sigterm_lets_a_job_within_the_grace_finish_and_claims_nothing_new(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0", APPLIANCE_WORKER__DRAIN_GRACE_S="60")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 2}})
    await running(q, job.id)
    worker.signal(signal.SIGTERM)
    await worker.status("draining")
    later = await q.submit({"service": "echo", "payload": {}})
    assert await worker.exit_code() == 0
    assert (await q.get(job.id)).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    left = await q.get(later.id)
    assert left is not None and left.status is JobStatus.PENDING and left.attempts == 0


async def test_second_signal_hands_back_at_once(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0", APPLIANCE_WORKER__DRAIN_GRACE_S="600")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 600}})
    await running(q, job.id)
    worker.signal(signal.SIGTERM)
    await worker.status("draining")
    worker.signal(signal.SIGINT)
    assert await worker.exit_code() == 0  # long before the 600 s grace or job
    back = await q.get(job.id)
    assert back is not None and back.status is JobStatus.PENDING and back.attempts == 0


# --- crashes, outages, fencing ----------------------------------------------------------------------------------


async def test_kill_9_mid_job_is_reclaimed_after_lease_expiry_and_completed_once(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    first = harness.start("--slot", "echo0")
    await first.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 1.5}})
    await running(q, job.id)
    first.kill()
    second = harness.start("--slot", "echo1")
    await second.ready()
    done = await job_in(q, job.id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
    assert done.status is JobStatus.COMPLETED
    assert done.worker_id == f"{MACHINE}-echo1" and done.attempts == 2 and done.result["attempt"] == 2
    assert await completed_events(q, job.id) == 1


async def test_a_killed_machines_jobs_come_back_elsewhere_and_complete_once(harness: Harness) -> None:
    """Every process of one machine SIGKILLed at once: its jobs come back by lease expiry alone (the survivor's
    reaper sleeps up to ten minutes unless a deadline it learned from the queue wakes it), run on the other
    machine, and each completes exactly once."""
    q = harness.queue
    assert q is not None
    patient = {"APPLIANCE_QUEUE__REAPER_MAX_SLEEP_MS": "600000"}
    doomed = [
        harness.start("--slot", f"echo{i}", "--concurrency", "2", APPLIANCE_MACHINE__ID="mdoomed", **patient)
        for i in range(2)
    ]
    for worker in doomed:
        await worker.ready()
    jobs = [await q.submit({"service": "echo", "payload": {"delay": 3}}) for _ in range(4)]
    for job in jobs:
        await running(q, job.id)
    # Killed at once, before anything else is awaited: no job can finish on the doomed machine first (waiting
    # for the survivor's start in between raced on a loaded machine). The survivor then starts and its first
    # reap learns when the dead leases expire.
    for worker in doomed:
        worker.signal(signal.SIGKILL)
    for worker in doomed:
        assert await worker.exit_code() == -signal.SIGKILL
    survivor = harness.start(
        "--slot", "echo0", "--concurrency", "4", APPLIANCE_MACHINE__ID="mlive", **patient
    )
    await survivor.ready()
    for job in jobs:
        done = await job_in(q, job.id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
        assert done.status is JobStatus.COMPLETED, done.errors
        assert done.worker_id == "mlive-echo0" and done.attempts == 2 and done.result["attempt"] == 2
        assert [e["kind"] for e in done.errors] == ["lease_expired"]
        assert await completed_events(q, job.id) == 1


async def test_redis_restart_mid_job_still_completes_once(tmp_path: Path) -> None:
    # A Redis that persists every write, so a kill -9 and restart keeps the queue (as production Redis would).
    server = LocalRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    h = Harness(tmp_path, server.url)
    # A lease long enough to outlive the outage: the worker must renew it on return, not lose the job.
    h.env["APPLIANCE_QUEUE__LEASE_MS"] = "20000"
    try:
        q = await h.connect()
        worker = h.start("--slot", "echo0")
        await worker.ready()
        job = await q.submit({"service": "echo", "payload": {"delay": 1.0}})
        await running(q, job.id)
        server.kill()
        await worker.status("redis unreachable")
        # The job finishes while Redis is away: its outcome waits for Redis.
        await asyncio.sleep(1.5)
        server.start()
        done = await job_in(q, job.id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
        assert done.status is JobStatus.COMPLETED and done.attempts == 1
        assert await completed_events(q, job.id) == 1
        await worker.status("idle, 1 job done")
        nxt = await q.submit({"service": "echo", "payload": {}})
        assert (await job_in(q, nxt.id, JobStatus.COMPLETED)).status is JobStatus.COMPLETED
    finally:
        await h.close()
        server.cleanup()


async def test_a_lost_lease_is_never_completed(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 1.0}})
    await running(q, job.id)
    worker.signal(signal.SIGSTOP)
    try:
        # Expire the frozen worker's lease and let the reaper put the job back; then another worker takes it.
        await q.client.zadd(q.keys.leases, {job.id: 0})
        reaped = await q.reap(force=True)
        assert reaped.requeued == 1
        thief = await WorkerSession.open(q, "mtest-thief", Capabilities(services=["echo"]))
        claimed = await thief.claim()
        assert claimed is not None and claimed.job.id == job.id
    finally:
        worker.signal(signal.SIGCONT)
    await worker.logged("lease lost")
    await worker.status("idle, 0 jobs done")
    held = await q.get(job.id)
    assert held is not None and held.status in (JobStatus.CLAIMED, JobStatus.RUNNING)
    assert held.worker_id == "mtest-thief" and await completed_events(q, job.id) == 0
    await q.complete(job.id, claimed.token, {"by": "thief"})
    assert (await q.get(job.id)).result == {"by": "thief"}  # type: ignore[union-attr]
    await thief.close()


# --- cancellation, timeouts -------------------------------------------------------------------------------------


async def test_cancelling_a_running_job_interrupts_the_connector(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 600}})
    await running(q, job.id)
    assert await q.cancel(job.id) == "requested"
    done = await job_in(q, job.id, JobStatus.CANCELLED, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.CANCELLED
    # The worker (one job at a time) is free again: the 600 s echo really stopped.
    nxt = await q.submit({"service": "echo", "payload": {}})
    assert (await job_in(q, nxt.id, JobStatus.COMPLETED)).status is JobStatus.COMPLETED


async def test_a_job_past_its_timeout_fails_retryable_as_timeout(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0")
    await worker.ready()
    job = await q.submit({"service": "echo", "payload": {"delay": 600}, "timeout_s": 0.5, "max_retries": 1})
    done = await job_in(q, job.id, JobStatus.DEAD, JobStatus.FAILED, JobStatus.COMPLETED)
    assert done.status is JobStatus.DEAD  # retryable, retried once, timed out again
    assert len(done.errors) == 2
    for error in done.errors:
        assert error["kind"] == "retryable" and error["details"]["kind"] == "timeout"
    nxt = await q.submit({"service": "echo", "payload": {}})
    assert (await job_in(q, nxt.id, JobStatus.COMPLETED)).status is JobStatus.COMPLETED


async def test_connector_failures_are_classified(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--slot", "echo0")
    await worker.ready()
    permanent = await q.submit({"service": "echo", "payload": {"fail": "permanent", "message": "bad input"}})
    retryable = await q.submit({"service": "echo", "payload": {"fail": "retryable"}, "max_retries": 2})
    p = await job_in(q, permanent.id, JobStatus.FAILED, JobStatus.DEAD)
    assert p.status is JobStatus.FAILED and p.attempts == 1 and p.errors[0]["kind"] == "permanent"
    assert p.error == "bad input"
    r = await job_in(q, retryable.id, JobStatus.DEAD, JobStatus.FAILED)
    assert r.status is JobStatus.DEAD and r.attempts == 3
    assert all(e["kind"] == "retryable" and e["details"]["code"] == "echo_retryable" for e in r.errors)


# --- when not to claim ------------------------------------------------------------------------------------------


COMFY_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


@pytest.fixture
def comfy_port() -> int:
    return free_port()


@pytest.fixture
def comfy(tmp_path: Path, comfy_port: int) -> Iterator[Callable[[], standin_process.StandinProcess]]:
    started: list[standin_process.StandinProcess] = []

    def start() -> standin_process.StandinProcess:
        p = standin_process.start("comfyui", "--port", str(comfy_port), "--data-dir", str(tmp_path / "comfy"))
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


async def test_service_down_stops_claiming_until_it_answers(
    harness: Harness, comfy: Callable[[], standin_process.StandinProcess], comfy_port: int
) -> None:
    q = harness.queue
    assert q is not None
    service = comfy()
    worker = harness.start("--gpu", "0", APPLIANCE_COMFYUI__BASE_PORT=str(comfy_port))
    await worker.ready()
    first = await q.submit({"service": "comfyui", "payload": {"workflow": COMFY_WORKFLOW}})
    assert (await job_in(q, first.id, JobStatus.COMPLETED, JobStatus.FAILED)).status is JobStatus.COMPLETED
    service.stop()
    await worker.status("service down: comfyui not answering")
    now = await q.server_time_ms()
    second = await q.submit({"service": "comfyui", "payload": {"workflow": COMFY_WORKFLOW}})
    await eventually(lambda: seen_after(q, f"{MACHINE}-gpu0", now + 1500), "heartbeats after the submit")
    record = json.loads(await q.client.hget(q.keys.worker_status, f"{MACHINE}-gpu0"))
    assert record["service_healthy"] is False and record["state"] == "service_down"
    assert (await q.get(second.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    comfy()
    done = await job_in(q, second.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.COMPLETED and done.attempts == 1


async def test_fleet_drain_flag_stops_claiming_but_stays_up(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    await q.client.set(drain_key(MACHINE), json.dumps({"reason": "test"}))
    worker = harness.start("--slot", "echo0")
    await worker.ready()
    await worker.status("drained")
    now = await q.server_time_ms()
    job = await q.submit({"service": "echo", "payload": {}})
    await eventually(lambda: seen_after(q, f"{MACHINE}-echo0", now + 1500), "heartbeats after the submit")
    assert (await q.get(job.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    record = json.loads(await q.client.hget(q.keys.worker_status, f"{MACHINE}-echo0"))
    assert record["drained"] is True and record["state"] == "drained"
    await q.client.delete(drain_key(MACHINE))
    assert (await job_in(q, job.id, JobStatus.COMPLETED)).status is JobStatus.COMPLETED
    assert worker.proc.poll() is None


async def test_concurrency_runs_jobs_in_parallel_up_to_the_limit(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    worker = harness.start("--connector", "echo", "--concurrency", "4")
    await worker.ready()
    jobs = await q.submit_many([{"service": "echo", "payload": {"delay": 1.0, "n": i}} for i in range(8)])
    most = 0
    while True:
        most = max(most, int(await q.client.zcard(q.keys.leases)))
        states = [(await q.get(j.id)).status for j in jobs]  # type: ignore[union-attr]
        if all(s.finished for s in states):
            break
        await asyncio.sleep(0.02)
    assert all(s is JobStatus.COMPLETED for s in states)
    assert 1 <= most <= 4
    spans = [(j.claimed_at, j.finished_at) for j in [await q.get(j.id) for j in jobs] if j]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)  # type: ignore[operator,misc]
    assert 2 <= overlap <= 4


# --- systemd integration ----------------------------------------------------------------------------------------


async def test_watchdog_pings_stop_when_the_event_loop_hangs(harness: Harness) -> None:
    worker = harness.start("--slot", "echo0", WATCHDOG_USEC="400000", APPLIANCE_TEST_HOOKS="1")
    await worker.ready()
    await worker.notify.wait_line(lambda line: line == "WATCHDOG=1", "a watchdog ping")
    worker.signal(signal.SIGUSR2)
    await asyncio.sleep(1.0)  # a ping already in flight may still arrive
    worker.notify.lines()
    before = len(worker.notify.messages)
    await asyncio.sleep(2.0)  # ten ping intervals
    after = [m for m in worker.notify.poll()[before:] if "WATCHDOG=1" in m]
    assert after == []
    assert worker.proc.poll() is None  # hung, not dead: systemd's watchdog has to kill it


# --- bounded results (issue 12, item 3) --------------------------------------------------------------------------


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_big_result_goes_to_storage_and_never_reaches_pubsub(tmp_path: Path) -> None:
    # A Redis that drops a pub/sub subscriber as soon as 64 KiB wait in its output buffer, as production Redis
    # does at 32 MiB: a result body on `complete_job` would cut every subscriber, an unrelated `job wait` too.
    server = LocalRedis().start()
    h = Harness(tmp_path, server.url)
    try:
        q = await h.connect()
        await q.client.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 60")
        watcher = q.client.pubsub()
        await watcher.subscribe("complete_job")
        # An unrelated job no worker here serves, and a real `appliance job wait` on it.
        other = await q.submit({"service": "echo", "requirements": {"tags": ["elsewhere"]}})
        env = {**h.env, "APPLIANCE_REDIS__QUEUE": "default"}
        waiter = start_cli(env, "job", "wait", other.id, "--json", "--timeout", "120")

        async def subscribed() -> bool:
            counts = dict(await q.client.pubsub_numsub("complete_job"))
            return counts.get("complete_job", 0) >= 2  # our watcher and the waiter

        await eventually(subscribed, "the job wait to subscribe")
        worker = h.start("--slot", "echo0")
        await worker.ready()
        blob = "x" * 400_000  # the echo result carries the payload: over the 256 KiB result limit
        big = await q.submit({"service": "echo", "payload": {"blob": blob}})
        done = await job_in(q, big.id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
        assert done.status is JobStatus.COMPLETED, done.errors
        # Redis holds a reference; the body lies in output storage.
        stored = done.result["stored_result"]
        assert done.result["result_bytes"] > q.settings.max_result_bytes and stored["kind"] == "result"
        body = json.loads(await asyncio.to_thread(Path(stored["path"]).read_text))
        assert body["echo"]["blob"] == blob
        assert len(await q.client.hget(q.keys.results, big.id)) < 1_000
        # The completion message names the job and sizes, never the body.
        message = None
        async with asyncio.timeout(DEADLINE_S):
            while message is None:
                message = await watcher.get_message(ignore_subscribe_messages=True, timeout=1)
        assert len(message["data"]) < 1_000 and json.loads(message["data"])["job"] == big.id
        # The unrelated waiter is still subscribed, and still sees its own job end.
        assert waiter.poll() is None, waiter.communicate()
        assert await subscribed()
        claimed = await q.claim("elsewhere-worker", [other.shape])
        assert claimed is not None
        await q.complete(other.id, claimed.token, {"fine": True})
        out, err = await asyncio.to_thread(waiter.communicate, timeout=60)
        assert waiter.returncode == 0, err
        assert json.loads(out)["result"] == {"fine": True}
        await watcher.aclose()
    finally:
        if "waiter" in locals() and waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
        await h.close()
        server.cleanup()
