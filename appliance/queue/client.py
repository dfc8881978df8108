"""The asyncio client of the job queue: submit, inspect, lease, finish.

queue = await Queue.connect("redis://127.0.0.1:6379/0")
job = await queue.submit(JobSpec(service="echo", payload={"hello": "world"}))
done = await queue.wait(job.id, timeout_s=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthorizationError as RedisAuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from appliance.config import check_database
from appliance.config.queue import ChannelsMode, QueueSettings, ScriptsMode
from appliance.queue.connections import connection_class_for
from appliance.queue.errors import (
    DuplicateJob,
    InvalidJob,
    JobNotFound,
    PayloadTooLarge,
    QueueError,
    ResultTooLarge,
    ScriptCode,
    raise_for_code,
)
from appliance.queue.keys import CHANNEL_COMPLETED, CHANNEL_FAILED, CHANNEL_PROGRESS, QueueKeys
from appliance.queue.models import (
    Capabilities,
    ClaimedJob,
    Job,
    JobSpec,
    JobStatus,
    QueueStats,
    ShapeStats,
    ms_to_datetime,
)
from appliance.queue.scripts import ScriptSet
from appliance.queue.shapes import WorkerClass, shape_of

log = logging.getLogger(__name__)

#: Jobs per round trip when submitting in bulk.
SUBMIT_BATCH = 500
#: `wait` after losing Redis: first and largest pause before reconnecting (s).
WAIT_RECONNECT_MIN_S = 0.2
WAIT_RECONNECT_MAX_S = 2.0
#: Most jobs one claim call leases.
MAX_CLAIM_BATCH = 256
#: Claim calls before `claim_many` gives up on a race it keeps losing (each lost one is a read-only call).
CLAIM_TRIES = 8
#: Life of a worker class SET after it was last written (ms); once it is gone claim.lua answers 'noclass' and the
#: client writes it again, so classes no worker uses any more disappear on their own.
CLAIM_CLASS_TTL_MS = 86_400_000


@dataclass(frozen=True)
class ReapResult:
    ran: bool
    records_dropped: int = 0
    requeued: int = 0
    dead: int = 0
    cancelled: int = 0
    #: ms until the next lease deadline or retry falls due (and the fleet's reaper guard frees), by the server's
    #: clock; None when nothing is leased or delayed. A reaper sleeps this long instead of polling.
    next_in_ms: int | None = None


def parse_spec(data: Mapping[str, Any] | JobSpec) -> JobSpec:
    """Validate a submitted job; the error names every offending field."""
    if isinstance(data, JobSpec):
        return data
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise InvalidJob(f"invalid job: {problems}") from None


def _json_or(raw: str | None, default: Any) -> Any:
    """`raw` parsed as JSON, or `default` when it is missing or not JSON."""
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def _int_or(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _time_or_none(ms: str | None) -> datetime | None:
    try:
        return ms_to_datetime(ms)
    except (ValueError, OverflowError, OSError):
        return None


def _job_from_body(body: Mapping[str, Any], job_id: str, **known: Any) -> Job:
    """The Job of a stored spec; fields that do not validate are left at their defaults."""
    fields = {k: v for k, v in body.items() if k in Job.model_fields and k != "id" and k not in known}
    for _ in range(len(fields) + 1):
        try:
            return Job(id=job_id, **{"service": "", **fields}, **known)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(fields)
            if not bad:
                break
            for name in bad:
                del fields[name]
    return Job(id=job_id, service="", **known)


def _split_around(value: str, before: int, after: int) -> list[str] | None:
    """Split `value` on '|' into before + 1 + after parts, the middle one keeping any extra '|'."""
    head = value.split("|", before) if before else [value]
    if len(head) != before + 1:
        return None
    tail = head[-1].rsplit("|", after)
    if len(tail) != after + 1:
        return None
    return head[:-1] + tail


class Queue:
    """One queue on one Redis (standalone or Cluster); safe to share between tasks."""

    def __init__(
        self,
        client: Any,
        *,
        queue_name: str = "default",
        settings: QueueSettings | None = None,
        scripts: ScriptSet | None = None,
        classifier: Callable[[JobSpec], JobSpec] | None = None,
    ) -> None:
        self.client = client
        self.keys = QueueKeys(queue_name)
        self.settings = settings or QueueSettings()
        self.scripts = scripts or ScriptSet(use_functions=self.settings.scripts is ScriptsMode.FUNCTIONS)
        #: Assigns a pool to jobs that name none (appliance.pools.classify), applied before the shape is taken.
        self.classifier = classifier
        self._classes: dict[tuple[str, ...], WorkerClass] = {}
        #: Called with the delay (ms) of every retry `fail` schedules: this process's reaper wakes for it, since
        #: the time it last read from the queue does not include it.
        self.on_retry_scheduled: Callable[[int], None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue_name: str = "default",
        settings: QueueSettings | None = None,
        password: str | None = None,
        username: str | None = None,
        cluster: bool = False,
        classifier: Callable[[JobSpec], JobSpec] | None = None,
        **redis_kwargs: Any,
    ) -> Queue:
        """Connect and check the server answers (with `queue.scripts = "functions"`, also that its library is
        this version's: ScriptLibraryError when it differs). Nothing is loaded into Redis here."""
        check_database(url)
        kwargs: dict[str, Any] = {"decode_responses": True, **redis_kwargs}
        if password is not None:
            kwargs["password"] = password
        if username is not None:
            kwargs["username"] = username
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client: Any = RedisCluster.from_url(url, **kwargs)
            await client.initialize()
        else:
            kwargs.setdefault("connection_class", connection_class_for(url))
            client = aioredis.Redis.from_url(url, **kwargs)
        queue = cls(client, queue_name=queue_name, settings=settings, classifier=classifier)
        try:
            await client.ping()
            await queue.scripts.load(client)
        except BaseException:
            await client.aclose()
            raise
        return queue

    async def close(self) -> None:
        await self.client.aclose()

    @property
    def name(self) -> str:
        return self.keys.name

    @property
    def channel_prefix(self) -> str:
        """What the lifecycle channels' names start with: nothing (shared) or the queue's key prefix."""
        return self.keys.prefix if self.settings.channels is ChannelsMode.QUEUE else ""

    def channel(self, name: str) -> str:
        """The name of lifecycle channel `name` (`complete_job`, ...) for this queue's `queue.channels`."""
        return self.channel_prefix + name

    def _common(self) -> list[Any]:
        return [self.channel_prefix, self.keys.name, self.settings.events.value, self.settings.events_maxlen]

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self.scripts.call(self.client, script, keys, self._common() + args)

    # --- submitting -------------------------------------------------------------------------------------------

    def _classified(self, spec: JobSpec | Mapping[str, Any]) -> JobSpec:
        parsed = parse_spec(spec)
        return self.classifier(parsed) if self.classifier is not None else parsed

    def _submit_call(self, spec: JobSpec) -> tuple[str, list[str], list[Any]]:
        job_id = spec.id or uuid.uuid4().hex
        shape, record = shape_of(spec)
        body = spec.model_dump(mode="json", exclude={"id"})
        body["id"] = job_id
        body["shape"] = shape
        encoded = json.dumps(body, separators=(",", ":"))
        if len(encoded) > self.settings.max_payload_bytes:  # json.dumps writes ASCII: characters are bytes
            raise PayloadTooLarge(
                f"job {job_id}", len(encoded), "max_payload_bytes", self.settings.max_payload_bytes
            )
        k = self.keys
        keys = [k.spec, k.meta, k.state, k.ready(shape), k.heads, k.shapes, k.counts, k.seq, k.events]
        args = [
            job_id,
            encoded,
            shape,
            json.dumps(record, sort_keys=True, separators=(",", ":")),
            spec.service,
            spec.priority,
            self.settings.priority_step_ms,
            spec.max_retries,
            int(spec.timeout_s * 1000) if spec.timeout_s else 0,
            k.wake_channel(shape),
            k.shapes_channel,
        ]
        return job_id, keys, args

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Validate and enqueue one job; a caller-chosen id that exists already raises DuplicateJob."""
        parsed = self._classified(spec)
        job_id, keys, args = self._submit_call(parsed)
        raise_for_code(int(await self._call("submit", keys, args)), job_id)
        return self._job_from_spec(parsed, job_id, keys[3].rsplit(":", 1)[1])

    async def submit_many(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        """Enqueue a batch, all or nothing: every job is validated and every caller-chosen id checked (against
        the queue and within the batch) before anything is written, then the jobs are enqueued in pipelined
        batches. InvalidJob or DuplicateJob means nothing was enqueued, so the caller may fix and retry.

        One race is left: another client submitting one of these ids between the check and the writes. Then
        DuplicateJob names it and its `submitted` lists the jobs of this call that were enqueued.
        """
        parsed = [self._classified(s) for s in specs]
        chosen = [s.id for s in parsed if s.id is not None]
        seen: set[str] = set()
        for job_id in chosen:
            if job_id in seen:
                raise DuplicateJob(job_id, f"id {job_id!r} appears twice in the batch; nothing was submitted")
            seen.add(job_id)
        for start in range(0, len(chosen), SUBMIT_BATCH):
            part = chosen[start : start + SUBMIT_BATCH]
            for job_id, state in zip(part, await self.client.hmget(self.keys.state, part), strict=True):
                if state is not None:
                    raise DuplicateJob(
                        job_id, f"a job with id {job_id!r} already exists; nothing was submitted"
                    )
        calls = [self._submit_call(s) for s in parsed]
        jobs = [
            self._job_from_spec(s, job_id, keys[3].rsplit(":", 1)[1])
            for s, (job_id, keys, _) in zip(parsed, calls, strict=True)
        ]
        codes: list[Any] = []
        if hasattr(self.client, "get_primaries"):
            for _, keys, args in calls:
                codes.append(await self._call("submit", keys, args))
                if int(codes[-1]) == ScriptCode.DUPLICATE:
                    break
        else:
            for start in range(0, len(calls), SUBMIT_BATCH):
                batch = calls[start : start + SUBMIT_BATCH]
                codes += await self.scripts.call_pipelined(
                    self.client, [("submit", keys, self._common() + args) for _, keys, args in batch]
                )
                if any(int(code) == ScriptCode.DUPLICATE for code in codes[-len(batch) :]):
                    break
        written = [job for job, code in zip(jobs, codes, strict=False) if int(code) == ScriptCode.OK]
        for job, code in zip(jobs, codes, strict=False):
            if int(code) != ScriptCode.OK:
                try:
                    raise_for_code(int(code), job.id)
                except DuplicateJob:
                    raise DuplicateJob(
                        job.id,
                        f"a job with id {job.id!r} was submitted by another client meanwhile; "
                        f"{len(written)} of the batch's {len(jobs)} jobs were submitted",
                        submitted=written,
                    ) from None
        return jobs

    @staticmethod
    def _job_from_spec(spec: JobSpec, job_id: str, shape: str) -> Job:
        return Job(
            **spec.model_dump(exclude={"id"}),
            id=job_id,
            shape=shape,
            status=JobStatus.PENDING,
            created_at=ms_to_datetime(time.time() * 1000),
        )

    # --- reading ----------------------------------------------------------------------------------------------

    async def server_time_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def get(self, job_id: str) -> Job | None:
        """The job's record and status, or None when unknown (or expired)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for column in (
            k.spec,
            k.meta,
            k.state,
            k.attempts,
            k.owner,
            k.progress,
            k.results,
            k.errors,
            k.info,
            k.cancels,
        ):
            pipe.hget(column, job_id)
        pipe.zscore(k.delayed, job_id)
        (
            spec,
            meta,
            state,
            attempts,
            owner,
            progress,
            result,
            errors,
            info,
            cancel,
            delayed,
        ) = await pipe.execute()
        if spec is None or state is None:
            return None
        # Every column is parsed defensively: an odd record (written by an older version, or by hand) shows
        # what can be read instead of crashing `job get/list/wait`.
        body = _json_or(spec, {})
        shape, _, created_ms = (
            (meta or "").split("|")[:3] if meta and meta.count("|") >= 2 else ("", "", None)
        )
        try:
            status = JobStatus(state)
        except ValueError:
            return None
        job = _job_from_body(
            body if isinstance(body, dict) else {},
            job_id,
            status=status,
            attempts=_int_or(attempts, 0),
            created_at=_time_or_none(created_ms),
            cancel_requested=cancel is not None,
            next_attempt_at=_time_or_none(delayed),
        )
        if owner:
            # token|worker|claimed_ms: the token never holds '|' and claimed_ms is a number, so the worker id is
            # whatever lies between (even a '|' written before ids were validated).
            lease = _split_around(owner, 1, 1)
            if lease:
                job.worker_id, job.claimed_at = lease[1], _time_or_none(lease[2])
        elif info:
            # worker|claimed_ms|finished_ms
            finished = _split_around(info, 0, 2)
            if finished:
                job.worker_id = finished[0] or None
                job.claimed_at = _time_or_none(finished[1])
                job.finished_at = _time_or_none(finished[2])
        if progress:
            parsed = _json_or(progress, None)
            job.progress = parsed if isinstance(parsed, dict) else None
        if result is not None:
            job.result = _json_or(result, result)
        if errors:
            history = _json_or(errors, [])
            if not isinstance(history, list):
                history = [history]
            job.errors = [e if isinstance(e, dict) else {"message": str(e)} for e in history]
            # `error` says why the job is not done: a completed job's earlier failed attempts stay in `errors`.
            if job.errors and status is not JobStatus.COMPLETED:
                job.error = str(job.errors[-1].get("message"))
        if job.status is JobStatus.PENDING:
            job.unworkable = not await self._shape_is_live(shape)
        return job

    async def require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def _shape_is_live(self, shape: str) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.shape_live, shape)
        pipe.time()
        seen, (seconds, micros) = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return seen is not None and int(float(seen)) >= now_ms - self.settings.worker_ttl_ms

    async def list_jobs(self, status: JobStatus | None = None, limit: int = 50) -> list[Job]:
        """Jobs from the indexes (waiting, active, delayed, dead, finished), never a scan of all jobs."""
        k = self.keys
        ids: list[str] = []
        if status in (None, JobStatus.PENDING):
            for shape in await self.client.zrange(k.heads, 0, -1):
                ids += await self.client.zrange(k.ready(shape), 0, limit - 1)
            ids += await self.client.zrange(k.delayed, 0, limit - 1)
        if status in (None, JobStatus.CLAIMED, JobStatus.RUNNING):
            ids += await self.client.zrange(k.leases, 0, limit - 1)
        if status is JobStatus.DEAD:
            ids += await self.client.zrevrange(k.dead, 0, limit - 1)
        elif status is None or status.finished:
            ids += await self.client.zrevrange(k.done, 0, (limit * 4) - 1)
        jobs = []
        for job_id in dict.fromkeys(ids):
            job = await self.get(job_id)
            if job and (status is None or job.status is status):
                jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    async def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_progress: Callable[[Job], Awaitable[None] | None] | None = None,
    ) -> Job:
        """Block until the job finishes (completed, failed, cancelled, dead); TimeoutError past `timeout_s`.

        A lost connection (Redis restarting) is not the end of the wait: it reconnects with backoff, subscribes
        again and re-reads the record (the outcome may have been published while nobody listened), for as long as
        `timeout_s` allows. A refusal (password, ACL) is raised at once: waiting will not change it.
        """
        delay = WAIT_RECONNECT_MIN_S
        outage = False
        async with asyncio.timeout(timeout_s):
            while True:
                pubsub = self.client.pubsub()
                try:
                    await pubsub.subscribe(
                        *map(self.channel, (CHANNEL_COMPLETED, CHANNEL_FAILED, CHANNEL_PROGRESS))
                    )
                    job = await self.require(job_id)
                    if outage:
                        log.info("Redis answers again; still waiting for job %s", job_id)
                    outage, delay = False, WAIT_RECONNECT_MIN_S
                    return await self._wait_subscribed(pubsub, job, on_progress)
                except (RedisAuthenticationError, RedisAuthorizationError):
                    raise
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    if not outage:
                        log.warning(
                            "waiting for job %s: lost Redis (%s); reconnecting", job_id, type(exc).__name__
                        )
                    outage = True
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, WAIT_RECONNECT_MAX_S)

    async def _wait_subscribed(
        self,
        pubsub: Any,
        job: Job,
        on_progress: Callable[[Job], Awaitable[None] | None] | None,
    ) -> Job:
        while not job.status.finished:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                try:
                    event = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue
                if event.get("job") != job.id or event.get("queue") != self.name:
                    continue
            job = await self.require(job.id)
            if on_progress is not None:
                maybe = on_progress(job)
                if asyncio.iscoroutine(maybe):
                    await maybe
        return job

    # --- cancelling -------------------------------------------------------------------------------------------

    async def _shape_of_job(self, job_id: str) -> str:
        meta = await self.client.hget(self.keys.meta, job_id)
        if meta is None:
            raise JobNotFound(job_id)
        return str(meta.split("|", 1)[0])

    async def cancel(self, job_id: str) -> str:
        """Cancel a job: 'cancelled' when it was waiting, 'requested' when its worker was told to stop it."""
        shape = await self._shape_of_job(job_id)
        k = self.keys
        code = raise_for_code(
            int(
                await self._call(
                    "cancel",
                    [
                        k.state,
                        k.meta,
                        k.ready(shape),
                        k.heads,
                        k.delayed,
                        k.owner,
                        k.cancels,
                        k.done,
                        k.counts,
                        k.events,
                        k.info,
                    ],
                    [job_id, self.settings.result_ttl_s * 1000, shape, k.cancel_channel],
                )
            ),
            job_id,
        )
        return "cancelled" if code == ScriptCode.OK else "requested"

    # --- the leased side: what a worker calls -----------------------------------------------------------------

    def claim_call(
        self, worker_id: str, worker_class: WorkerClass, token: str, count: int = 1
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of claim.lua after the common prefix, exactly as `claim_many` sends them."""
        k = self.keys
        keys = [
            k.heads,
            k.worker_class(worker_class.class_id),
            k.spec,
            k.meta,
            k.state,
            k.attempts,
            k.owner,
            k.leases,
            k.counts,
            k.events,
            *(k.ready(shape) for shape in worker_class.candidates),
        ]
        slack = self.settings.claim_slack_ms * 1000  # scores count submission time in µs
        return keys, [worker_id, token, self.settings.lease_ms, count, slack, *worker_class.candidates]

    def worker_class(self, shapes: Sequence[str]) -> WorkerClass:
        """The class of a shape list (cached: sessions re-use the same list until a new shape appears)."""
        frozen = tuple(shapes)
        found = self._classes.get(frozen)
        if found is None:
            if len(self._classes) >= 256:
                self._classes.clear()
            found = self._classes[frozen] = WorkerClass.of(frozen)
        return found

    async def register_class(self, worker_class: WorkerClass) -> None:
        """Write the class SET claim.lua walks against (claims also write it when they find it missing)."""
        key = self.keys.worker_class(worker_class.class_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, *worker_class.shapes)
        pipe.pexpire(key, CLAIM_CLASS_TTL_MS)
        await pipe.execute()

    async def claim(self, worker_id: str, shapes: Sequence[str]) -> ClaimedJob | None:
        """Lease the best waiting job among `shapes`, or None when none waits."""
        claimed = await self.claim_many(worker_id, shapes, 1)
        return claimed[0] if claimed else None

    async def claim_many(self, worker_id: str, shapes: Sequence[str], count: int) -> list[ClaimedJob]:
        """Lease up to `count` of the best waiting jobs among `shapes`, best first, in one script call when
        the best shape is among the client's candidates (claim.lua's hint keeps them right); each job gets its own
        fencing token. Fewer than `count` come back when the next job ranks behind another shape's best."""
        return (await self.finish_and_claim((), worker_id, shapes, count))[1]

    async def finish_and_claim(
        self, outcomes: Sequence[tuple[str, str, Any]], worker_id: str, shapes: Sequence[str], count: int
    ) -> tuple[list[int], list[ClaimedJob]]:
        """`complete_many(outcomes)` and `claim_many(...)` in one round trip (a pipeline of the two scripts):
        the loop of a worker whose jobs are short. Returns (complete codes, claimed jobs)."""
        count = min(count, MAX_CLAIM_BATCH)
        if not shapes or count < 1:
            return await self.complete_many(outcomes), []
        worker_class = self.worker_class(shapes)
        codes: list[int] = []
        pipelined = bool(outcomes) and not hasattr(self.client, "get_primaries")
        if outcomes and not pipelined:
            codes = await self.complete_many(outcomes)
        for attempt in range(CLAIM_TRIES):
            token = secrets.token_hex(12)
            keys, args = self.claim_call(worker_id, worker_class, token, count)
            if pipelined and attempt == 0:
                done, reply = await self.scripts.call_pipelined(
                    self.client,
                    [
                        ("complete", *self.complete_call(outcomes, common=True)),
                        ("claim", keys, self._common() + args),
                    ],
                )
                codes = [int(c) for c in done]
            else:
                reply = await self._call("claim", keys, args)
            outcome = reply[0]
            if outcome == "ok":
                worker_class.take_hint(reply[1])
                return codes, self._claimed(worker_id, token, reply)
            if outcome == "none":
                worker_class.take_hint("")
                return codes, []
            if outcome == "retry":
                worker_class.take_hint(reply[1])
            elif outcome == "noclass":
                await self.register_class(worker_class)
            else:
                raise QueueError(f"claim.lua answered {reply!r}")
        # Other workers kept taking the best job first; `worker_class.hint` still names waiting shapes, which
        # tells WorkerSession to come back at once.
        return codes, []

    @staticmethod
    def _claimed(worker_id: str, token: str, reply: list[Any]) -> list[ClaimedJob]:
        deadline = int(reply[2])
        out = []
        for index, at in enumerate(range(4, len(reply), 3), start=1):
            # The body was validated at submit; one pass in pydantic-core parses and types it again.
            job = Job.model_validate_json(reply[at + 1])
            attempt = int(reply[at + 2])
            job.status, job.attempts, job.worker_id = JobStatus.CLAIMED, attempt, worker_id
            out.append(
                ClaimedJob.model_construct(
                    job=job, token=f"{token}.{index}", attempt=attempt, lease_deadline_ms=deadline
                )
            )
        return out

    async def heartbeat(
        self, worker_id: str, leases: Mapping[str, str], shapes: Sequence[str] = ()
    ) -> dict[str, str]:
        """Renew all of a worker's leases in one call: {job id: 'ok' | 'cancelled' | 'lost'}."""
        k = self.keys
        flat: list[str] = []
        for job_id, token in leases.items():
            flat += [job_id, token]
        codes = await self._call(
            "heartbeat",
            [k.owner, k.leases, k.cancels, k.workers_seen, k.shape_live],
            [worker_id, self.settings.lease_ms, len(shapes), *shapes, *flat],
        )
        names = {ScriptCode.OK: "ok", ScriptCode.CANCEL_REQUESTED: "cancelled", ScriptCode.LEASE_LOST: "lost"}
        return {job_id: names[ScriptCode(int(c))] for job_id, c in zip(leases, codes, strict=True)}

    async def progress(
        self,
        job_id: str,
        token: str,
        percent: float,
        message: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record progress; returns True when the job's cancellation was requested. LeaseLost if not ours."""
        record: dict[str, Any] = {"percent": round(max(0.0, min(100.0, float(percent))), 2)}
        if message:
            record["message"] = message[:500]
        if data:
            record["data"] = dict(data)
        k = self.keys
        code = raise_for_code(
            int(
                await self._call(
                    "progress",
                    [k.owner, k.state, k.progress, k.cancels, k.events],
                    [
                        job_id,
                        token,
                        json.dumps(record, separators=(",", ":")),
                        record["percent"],
                        json.dumps(
                            {k_: v for k_, v in record.items() if k_ != "data"}, separators=(",", ":")
                        ),
                    ],
                )
            ),
            job_id,
        )
        return code == ScriptCode.CANCEL_REQUESTED

    async def complete(self, job_id: str, token: str, result: Any = None) -> None:
        """Store a job's result and end its lease; LeaseLost when `token` no longer owns the job."""
        raise_for_code((await self.complete_many([(job_id, token, result)]))[0], job_id)

    async def complete_many(self, outcomes: Sequence[tuple[str, str, Any]]) -> list[int]:
        """Complete several leased jobs, (job id, token, result) each, in one script call. Returns one code per
        job (ScriptCode.OK or ScriptCode.LEASE_LOST), so one lost lease does not hold back the others."""
        if not outcomes:
            return []
        return [int(c) for c in await self._call("complete", *self.complete_call(outcomes))]

    def complete_call(
        self, outcomes: Sequence[tuple[str, str, Any]], common: bool = False
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of complete.lua, after the common prefix (with it when `common`)."""
        k = self.keys
        keys = [k.owner, k.leases, k.state, k.results, k.info, k.done, k.counts, k.events, k.cancels, k.meta]
        args: list[Any] = [*(self._common() if common else ()), self.settings.result_ttl_s * 1000]
        limit = self.settings.max_result_bytes
        for job_id, token, result in outcomes:
            encoded = json.dumps(result, separators=(",", ":"), default=str)
            if len(encoded) > limit:  # json.dumps writes ASCII: characters are bytes
                raise ResultTooLarge(f"the result of job {job_id}", len(encoded), "max_result_bytes", limit)
            args += [job_id, token, encoded]
        return keys, args

    def retry_delay_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Exponential backoff with equal jitter, never shorter than a service's Retry-After."""
        ceiling = min(self.settings.retry_max_ms, self.settings.retry_base_ms * 2 ** max(0, attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after_s:
            delay = max(delay, retry_after_s * 1000)
        return int(delay)

    async def fail(
        self,
        job_id: str,
        token: str,
        error: str,
        *,
        retryable: bool,
        details: Mapping[str, Any] | None = None,
        attempt: int | None = None,
        shape: str | None = None,
        cancelled: bool = False,
    ) -> JobStatus:
        """Record a failed attempt. Returns the job's new status: pending (retry), failed, dead or cancelled."""
        shape = shape or await self._shape_of_job(job_id)
        if attempt is None:
            attempt = int(await self.client.hget(self.keys.attempts, job_id) or 1)
        details = dict(details or {})
        record = {
            "message": str(error)[:2000],
            "kind": "cancelled" if cancelled else ("retryable" if retryable else "permanent"),
            "attempt": attempt,
            "at": int(time.time() * 1000),
            **({"details": details} if details else {}),
        }
        disposition = "cancelled" if cancelled else ("retry" if retryable else "permanent")
        delay = self.retry_delay_ms(attempt, details.get("retry_after_s")) if retryable else 0
        k = self.keys
        code = raise_for_code(
            int(
                await self._call(
                    "fail",
                    [
                        k.owner,
                        k.leases,
                        k.state,
                        k.attempts,
                        k.meta,
                        k.errors,
                        k.delayed,
                        k.ready(shape),
                        k.heads,
                        k.done,
                        k.dead,
                        k.counts,
                        k.events,
                        k.info,
                        k.cancels,
                        k.progress,
                    ],
                    [
                        job_id,
                        token,
                        json.dumps(record, separators=(",", ":"), default=str),
                        disposition,
                        delay,
                        self.settings.result_ttl_s * 1000,
                        self.settings.dead_ttl_s * 1000,
                        shape,
                        k.wake_channel(shape),
                        json.dumps(
                            {k_: v for k_, v in record.items() if k_ != "details"},
                            separators=(",", ":"),
                            default=str,
                        ),
                    ],
                )
            ),
            job_id,
        )
        if code == ScriptCode.RETRY_SCHEDULED and self.on_retry_scheduled is not None:
            self.on_retry_scheduled(delay)
        return {
            ScriptCode.RETRY_SCHEDULED: JobStatus.PENDING,
            ScriptCode.DEAD: JobStatus.DEAD,
            ScriptCode.FAILED: JobStatus.FAILED,
            ScriptCode.CANCELLED: JobStatus.CANCELLED,
        }[ScriptCode(code)]

    async def finish_cancelled(self, job_id: str, token: str, shape: str | None = None) -> None:
        """The worker stopped a job whose cancellation was requested: end it cancelled."""
        await self.fail(job_id, token, "cancelled on request", retryable=False, shape=shape, cancelled=True)

    async def _release(
        self, job_id: str, token: str, worker_id: str, counted: bool, reason: str, shape: str | None
    ) -> int:
        shape = shape or await self._shape_of_job(job_id)
        k = self.keys
        return raise_for_code(
            int(
                await self._call(
                    "release",
                    [
                        k.owner,
                        k.leases,
                        k.state,
                        k.attempts,
                        k.meta,
                        k.ready(shape),
                        k.heads,
                        k.counts,
                        k.events,
                        k.cancels,
                        k.done,
                        k.dead,
                        k.errors,
                        k.info,
                        k.progress,
                    ],
                    [
                        job_id,
                        token,
                        worker_id,
                        "1" if counted else "0",
                        reason,
                        shape,
                        k.wake_channel(shape),
                        self.settings.result_ttl_s * 1000,
                        self.settings.dead_ttl_s * 1000,
                    ],
                )
            ),
            job_id,
        )

    async def release(self, job_id: str, token: str, reason: str = "drain", shape: str | None = None) -> None:
        """Hand a leased job back at its place in line; the attempt does not count."""
        await self._release(job_id, token, "", False, reason, shape)

    async def jobs_of_worker(self, worker_id: str) -> list[str]:
        """Ids of the jobs a worker holds leases on (a scan of the active leases, not of all jobs)."""
        found = []
        async for job_id, owner in self.client.hscan_iter(self.keys.owner, count=500):
            lease = _split_around(owner, 1, 1)
            if lease and lease[1] == worker_id:
                found.append(job_id)
        return found

    async def return_jobs_of_worker(self, worker_id: str, reason: str = "worker_failed") -> int:
        """Put every job leased by a dead worker back in line now (the attempt counts). Returns how many."""
        returned = 0
        for job_id in await self.jobs_of_worker(worker_id):
            try:
                await self._release(job_id, "", worker_id, True, reason, None)
                returned += 1
            except QueueError:
                continue  # finished or re-leased meanwhile
        return returned

    # --- housekeeping -----------------------------------------------------------------------------------------

    async def reap(self, force: bool = False, limit: int = 500) -> ReapResult:
        """Requeue expired leases and due retries, drop expired records; once per interval across the fleet.
        The result says when the next lease deadline or retry falls due (`next_in_ms`)."""
        k = self.keys
        reply = await self._call(
            "reap",
            [k.reaper_lock, k.leases, k.delayed, k.done, k.dead, *k.job_columns()],
            [self.settings.reaper_interval_ms, limit, "1" if force else "0"],
        )
        dropped, expired, due, wait = reply
        next_in_ms = int(wait) if int(wait) >= 0 else None
        if int(dropped) < 0:
            return ReapResult(ran=False, next_in_ms=next_in_ms)
        by_shape: dict[str, list[str]] = {}
        for pairs in (expired, due):
            for i in range(0, len(pairs), 2):
                by_shape.setdefault(pairs[i + 1], []).append(pairs[i])
        requeued = dead = cancelled = 0
        for shape, ids in by_shape.items():
            r, d, c = await self._call(
                "requeue",
                [
                    k.ready(shape),
                    k.heads,
                    k.leases,
                    k.delayed,
                    k.owner,
                    k.state,
                    k.attempts,
                    k.meta,
                    k.errors,
                    k.done,
                    k.dead,
                    k.counts,
                    k.events,
                    k.info,
                    k.cancels,
                    k.progress,
                ],
                [
                    shape,
                    self.settings.result_ttl_s * 1000,
                    self.settings.dead_ttl_s * 1000,
                    k.wake_channel(shape),
                    *ids,
                ],
            )
            requeued, dead, cancelled = requeued + int(r), dead + int(d), cancelled + int(c)
        return ReapResult(
            ran=True,
            records_dropped=int(dropped),
            requeued=requeued,
            dead=dead,
            cancelled=cancelled,
            next_in_ms=next_in_ms,
        )

    async def stats(self) -> QueueStats:
        """Depths, totals and per-shape state from counters and index sizes (no job scans)."""
        k = self.keys
        now = await self.server_time_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.counts)
        pipe.zcard(k.leases)
        pipe.zcard(k.delayed)
        pipe.zcard(k.dead)
        pipe.hgetall(k.shapes)
        pipe.hgetall(k.shape_live)
        pipe.zcount(k.workers_seen, now - self.settings.worker_ttl_ms, "+inf")
        counts, active, delayed, dead, shapes, live, workers = await pipe.execute()
        shape_ids = sorted(shapes)
        pipe = self.client.pipeline(transaction=False)
        for shape in shape_ids:
            pipe.zcard(k.ready(shape))
            pipe.zrange(k.ready(shape), 0, 0)
        sizes = await pipe.execute()
        heads = [sizes[i + 1][0] if sizes[i + 1] else None for i in range(0, len(sizes), 2)]
        pipe = self.client.pipeline(transaction=False)
        for head in heads:
            pipe.hget(k.meta, head or "")
        head_meta = await pipe.execute()
        rows, waiting, unworkable = [], 0, 0
        for i, shape in enumerate(shape_ids):
            depth = int(sizes[2 * i])
            is_live = int(float(live.get(shape, 0))) >= now - self.settings.worker_ttl_ms
            oldest = None
            if head_meta[i]:
                oldest = max(0.0, (now - int(head_meta[i].split("|")[2])) / 1000)
            waiting += depth
            if depth and not is_live:
                unworkable += depth
            rows.append(
                ShapeStats(
                    shape=shape,
                    requirements=json.loads(shapes[shape]),
                    waiting=depth,
                    oldest_wait_s=oldest,
                    live_workers=is_live,
                )
            )
        return QueueStats(
            queue=self.name,
            waiting=waiting,
            delayed=int(delayed),
            active=int(active),
            dead=int(dead),
            unworkable=unworkable,
            totals={n: int(v) for n, v in counts.items()},
            shapes=rows,
            workers=int(workers),
        )

    async def worker_session(
        self, worker_id: str, capabilities: Capabilities, *, machine_id: str | None = None
    ) -> WorkerSession:
        """Register a worker and subscribe to wake-ups for the shapes it can serve."""
        from appliance.queue.session import WorkerSession

        session = WorkerSession(self, worker_id, capabilities, machine_id=machine_id)
        await session.start()
        return session


from appliance.queue.session import WorkerSession  # noqa: E402  (type name for annotations)

__all__ = ["Queue", "ReapResult", "parse_spec", "WorkerSession"]
