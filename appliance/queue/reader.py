"""The reading side of the queue: a job's record, lists from the indexes, waiting for an outcome, stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthorizationError as RedisAuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from appliance.queue.conn import QueueConnection
from appliance.queue.errors import JobNotFound
from appliance.queue.events import pubsub_events
from appliance.queue.keys import CHANNEL_COMPLETED, CHANNEL_FAILED, CHANNEL_PROGRESS
from appliance.queue.limits import Limits
from appliance.queue.models import Job, JobStatus, QueueStats, ShapeStats
from appliance.queue.records import Finished, Lease, Meta, int_or, json_or, shape_of_meta, time_or_none

log = logging.getLogger(__name__)

#: `wait` after losing Redis: first and largest pause before reconnecting (s).
WAIT_RECONNECT_MIN_S = 0.2
WAIT_RECONNECT_MAX_S = 2.0

#: A page of a customer's jobs reads at most this many index entries per job asked for (a status filter skips).
TENANT_PAGE_READS = 4

OnProgress = Callable[[Job], Awaitable[None] | None]


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


def _add_columns(job: Job, owner: Any, info: Any, progress: Any, result: Any, errors: Any) -> None:
    """Fill in who holds or held the job, its progress, result and error history (each column defensively:
    an odd record, written by an older version or by hand, shows what can be read)."""
    if owner:
        lease = Lease.decode(owner)
        if lease:
            job.worker_id, job.claimed_at = lease.worker, time_or_none(lease.claimed_ms)
    elif info:
        finished = Finished.decode(info)
        if finished:
            job.worker_id = finished.worker or None
            job.claimed_at = time_or_none(finished.claimed_ms)
            job.finished_at = time_or_none(finished.finished_ms)
    if progress:
        parsed = json_or(progress, None)
        job.progress = parsed if isinstance(parsed, dict) else None
    if result is not None:
        job.result = json_or(result, result)
    if errors:
        history = json_or(errors, [])
        if not isinstance(history, list):
            history = [history]
        job.errors = [e if isinstance(e, dict) else {"message": str(e)} for e in history]
        # `error` says why the job is not done: a completed job's earlier failed attempts stay in `errors`.
        if job.errors and job.status is not JobStatus.COMPLETED:
            job.error = str(job.errors[-1].get("message"))


def _finished(state: Any) -> bool:
    """Whether a parent's stored status is a finished one (a missing record counts: it finished and expired)."""
    return state is None or state in _FINISHED


_FINISHED = frozenset(s.value for s in JobStatus if s.finished)


class Reader:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    async def get(self, job_id: str) -> Job | None:
        """The job's record and status, or None when unknown (or expired)."""
        k = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        for column in k.job_columns():
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
            _customer,
            _parents,
            delayed,
        ) = await pipe.execute()
        if spec is None or state is None:
            return None
        try:
            status = JobStatus(state)
        except ValueError:
            return None
        body = json_or(spec, {})
        decoded = Meta.decode(meta)
        job = _job_from_body(
            body if isinstance(body, dict) else {},
            job_id,
            status=status,
            attempts=int_or(attempts, 0),
            created_at=time_or_none(decoded.created_ms if decoded else None),
            cancel_requested=cancel is not None,
            next_attempt_at=time_or_none(delayed),
        )
        _add_columns(job, owner, info, progress, result, errors)
        if job.status is JobStatus.BLOCKED and job.after:
            states = await self.conn.client.hmget(k.state, job.after)
            job.waiting_on = [p for p, st in zip(job.after, states, strict=True) if not _finished(st)]
        if job.status is JobStatus.PENDING:
            job.unworkable = not await self._shape_is_live(decoded.shape if decoded else "")
            job.held_by = await self._held_by(decoded.shape if decoded else "", job.customer_id)
            if job.held_by is None and decoded is not None and meta.count("|") >= 6:
                # Out of line because of its customer's limit: it runs as the customer's slots or tokens free.
                score = meta.rsplit("|", 1)[1]
                job.held_by = await Limits(self.conn).holding(job_id, job.customer_id, decoded.shape, score)
                # A claim of a worker that could run it met it and held it back: waiting for a limit is not
                # being unworkable.
                job.unworkable = job.unworkable and job.held_by is None
        return job

    async def parent_results(self, job: Job) -> dict[str, Any]:
        """The results of the jobs `job` waited for (`after`), by id: what its worker hands the connector
        (ConnectorJob.parents). A parent that did not complete (its failure was ignored) or whose record expired
        maps to None."""
        if not job.after:
            return {}
        k = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hmget(k.state, job.after)
        pipe.hmget(k.results, job.after)
        states, results = await pipe.execute()
        return {
            parent: json_or(result, result) if state == JobStatus.COMPLETED.value else None
            for parent, state, result in zip(job.after, states, results, strict=True)
        }

    async def customers_of(self, job_ids: list[str]) -> dict[str, str | None]:
        """The customer of each job ('' for none; None when the job does not exist): the HTTP API lets a job wait
        only for its own customer's jobs, whose results its worker would otherwise see."""
        if not job_ids:
            return {}
        k = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hmget(k.state, job_ids)
        pipe.hmget(k.customer, job_ids)
        states, customers = await pipe.execute()
        return {
            job_id: (str(customer or "") if state is not None else None)
            for job_id, state, customer in zip(job_ids, states, customers, strict=True)
        }

    async def _held_by(self, shape: str, customer: str | None) -> str | None:
        """The pause that keeps a waiting job from being claimed, if any (queue first, then shape, customer)."""
        fields = ["queue", f"shape:{shape}", f"customer:{customer or '-'}"]
        flags = await self.conn.client.hmget(self.conn.keys.paused, fields)
        for what, flag in zip(("queue", "shape", "customer"), flags, strict=True):
            if flag is not None:
                return f"{what} paused"
        return None

    async def require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def _shape_is_live(self, shape: str) -> bool:
        if self.conn.cluster:  # a Cluster pipeline refuses keyless commands (TIME)
            seen = await self.conn.client.hget(self.conn.keys.shape_live, shape)
            now_ms = await self.conn.server_time_ms()
        else:
            pipe = self.conn.client.pipeline(transaction=False)
            pipe.hget(self.conn.keys.shape_live, shape)
            pipe.time()
            seen, (seconds, micros) = await pipe.execute()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        return seen is not None and int(float(seen)) >= now_ms - self.conn.settings.worker_ttl_ms

    async def list_jobs(self, status: JobStatus | None = None, limit: int = 50) -> list[Job]:
        """Jobs from the indexes (waiting, active, delayed, dead, finished), never a scan of all jobs."""
        k, client = self.conn.keys, self.conn.client
        ids: list[str] = []
        if status in (None, JobStatus.PENDING):
            for shape in await client.zrange(k.heads, 0, -1):
                ids += await client.zrange(k.ready(shape), 0, limit - 1)
            ids += await client.zrange(k.delayed, 0, limit - 1)
            ids += [m.split("|", 2)[2] for m in await client.zrange(k.held, 0, limit - 1)]
            ids += [m.split("|", 3)[3] for m in await client.zrange(k.limited, 0, limit - 1)]
        if status in (None, JobStatus.BLOCKED):
            ids += await client.zrange(k.blocked, 0, limit - 1)
        if status in (None, JobStatus.CLAIMED, JobStatus.RUNNING):
            ids += await client.zrange(k.leases, 0, limit - 1)
        if status is JobStatus.DEAD:
            ids += await client.zrevrange(k.dead, 0, limit - 1)
        elif status is None or status.finished:
            ids += await client.zrevrange(k.done, 0, (limit * 4) - 1)
        jobs = []
        for job_id in dict.fromkeys(ids):
            job = await self.get(job_id)
            if job and (status is None or job.status is status):
                jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    async def tenant_page(
        self, customer: str, status: JobStatus | None = None, limit: int = 50, cursor: int | None = None
    ) -> tuple[list[Job], int | None]:
        """One page of a customer's jobs, newest first, from its own index (submit.lua writes it): at most
        `limit` jobs, reading at most TENANT_PAGE_READS x `limit` index entries whatever the filter, so a page
        costs the same however many jobs the queue or the customer has. Returns the jobs and the cursor of the
        next page (None at the end); a page can hold fewer than `limit` jobs and still have a next one.

        Ids whose record expired are dropped from the index as a page passes them."""
        k, client = self.conn.keys, self.conn.client
        index = k.tenant_jobs(customer)
        high = f"({cursor}" if cursor is not None else "+inf"
        reads = limit * TENANT_PAGE_READS
        entries = await client.zrevrangebyscore(index, high, "-inf", start=0, num=reads, withscores=True)
        if not entries:
            return [], None
        ids = [str(i) for i, _ in entries]
        states = await client.hmget(k.state, ids)
        gone = [i for i, state in zip(ids, states, strict=True) if state is None]
        if gone:
            await client.zrem(index, *gone)
        jobs: list[Job] = []
        last = None
        for (job_id, score), state in zip(entries, states, strict=True):
            last = int(score)
            if state is None or (status is not None and state != status.value):
                continue
            job = await self.get(str(job_id))
            if job is not None and job.customer_id == customer:
                jobs.append(job)
            if len(jobs) >= limit:
                break
        more = len(jobs) >= limit or len(entries) == reads
        return jobs, (last if more else None)

    async def leased(self) -> list[str]:
        """Ids of every leased job (the lease index)."""
        return [str(i) for i in await self.conn.client.zrange(self.conn.keys.leases, 0, -1)]

    async def shapes_of_jobs(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The shape of each job that still has a record ('' for one that expired)."""
        unique = list(dict.fromkeys(job_ids))
        if not unique:
            return {}
        metas = await self.conn.client.hmget(self.conn.keys.meta, unique)
        return {
            job_id: shape_of_meta(meta) if meta else "" for job_id, meta in zip(unique, metas, strict=True)
        }

    async def wait(
        self, job_id: str, timeout_s: float | None = None, on_progress: OnProgress | None = None
    ) -> Job:
        """Block until the job finishes (completed, failed, cancelled, dead); TimeoutError past `timeout_s`.

        A lost connection (Redis restarting) is not the end of the wait: it reconnects with backoff, subscribes
        again and re-reads the record (the outcome may have been published while nobody listened), for as long as
        `timeout_s` allows. A refusal (password, ACL) is raised at once: waiting will not change it.
        """
        delay = WAIT_RECONNECT_MIN_S
        outage = False
        channels = [self.conn.channel(c) for c in (CHANNEL_COMPLETED, CHANNEL_FAILED, CHANNEL_PROGRESS)]
        async with asyncio.timeout(timeout_s):
            while True:
                pubsub = self.conn.client.pubsub()
                try:
                    await (pubsub.ssubscribe if self.conn.sharded else pubsub.subscribe)(*channels)
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

    async def _wait_subscribed(self, pubsub: Any, job: Job, on_progress: OnProgress | None) -> Job:
        receive = pubsub.get_sharded_message if self.conn.sharded else pubsub.get_message
        while not job.status.finished:
            message = await receive(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and not any(
                event.get("job") == job.id and event.get("queue") == self.conn.name
                for event in pubsub_events(message["data"])
            ):
                continue
            job = await self.require(job.id)
            if on_progress is not None:
                maybe = on_progress(job)
                if asyncio.iscoroutine(maybe):
                    await maybe
        return job

    async def stats(self) -> QueueStats:
        """Depths, totals and per-shape state from counters and index sizes (no job scans)."""
        k, settings = self.conn.keys, self.conn.settings
        now = await self.conn.server_time_ms()
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hgetall(k.counts)
        pipe.zcard(k.leases)
        pipe.zcard(k.delayed)
        pipe.zcard(k.dead)
        pipe.hgetall(k.shapes)
        pipe.hgetall(k.shape_live)
        pipe.zcount(k.workers_seen, now - settings.worker_ttl_ms, "+inf")
        pipe.hgetall(k.paused)
        pipe.zcard(k.held)
        pipe.zcard(k.blocked)
        pipe.zcard(k.limited)
        (
            counts,
            active,
            delayed,
            dead,
            shapes,
            live,
            workers,
            paused,
            held,
            blocked,
            limited,
        ) = await pipe.execute()
        rows = await self._shape_rows(shapes, live, now)
        return QueueStats(
            queue=self.conn.name,
            waiting=sum(r.waiting for r in rows),
            delayed=int(delayed),
            active=int(active),
            dead=int(dead),
            unworkable=sum(r.waiting for r in rows if not r.live_workers),
            totals={n: int(v) for n, v in counts.items()},
            shapes=rows,
            workers=int(workers),
            paused=sorted(paused),
            held=int(held),
            blocked=int(blocked),
            limited=int(limited),
            limited_by=await self._limited_by() if int(limited) else {},
        )

    async def _limited_by(self) -> dict[str, str]:
        """Customer -> `N held: <the limit that binds>` for each customer whose jobs a limit holds."""
        limits = Limits(self.conn)
        return {
            customer: f"{count} held: {await limits.binding(customer)}"
            for customer, count in (await limits.held_by_customer()).items()
        }

    async def _shape_rows(self, shapes: dict[str, str], live: dict[str, str], now: int) -> list[ShapeStats]:
        k = self.conn.keys
        shape_ids = sorted(shapes)
        pipe = self.conn.client.pipeline(transaction=False)
        for shape in shape_ids:
            pipe.zcard(k.ready(shape))
            pipe.zrange(k.ready(shape), 0, 0)
        sizes = await pipe.execute()
        heads = [sizes[i + 1][0] if sizes[i + 1] else None for i in range(0, len(sizes), 2)]
        pipe = self.conn.client.pipeline(transaction=False)
        for head in heads:
            pipe.hget(k.meta, head or "")
        head_meta = await pipe.execute()
        rows = []
        for i, shape in enumerate(shape_ids):
            meta = Meta.decode(head_meta[i])
            oldest = None
            if meta and meta.created_ms is not None:
                oldest = max(0.0, (now - meta.created_ms) / 1000)
            rows.append(
                ShapeStats(
                    shape=shape,
                    requirements=json.loads(shapes[shape]),
                    waiting=int(sizes[2 * i]),
                    oldest_wait_s=oldest,
                    live_workers=int(float(live.get(shape, 0))) >= now - self.conn.settings.worker_ttl_ms,
                )
            )
        return rows
