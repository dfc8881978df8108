"""The producer side of the queue: submit jobs (one or a batch) and cancel them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from appliance.queue.conn import Call, QueueConnection
from appliance.queue.errors import (
    DuplicateJob,
    InvalidJob,
    JobNotFound,
    NotDurable,
    PayloadTooLarge,
    ScriptCode,
    raise_for_code,
)
from appliance.queue.models import Job, JobSpec, JobStatus, ms_to_datetime
from appliance.queue.records import shape_of_meta
from appliance.queue.shapes import shape_of

#: Jobs per round trip when submitting in bulk.
SUBMIT_BATCH = 500


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


async def shape_of_job(conn: QueueConnection, job_id: str) -> str:
    """The shape of a stored job (from its meta column); JobNotFound when it has none."""
    meta = await conn.client.hget(conn.keys.meta, job_id)
    if meta is None:
        raise JobNotFound(job_id)
    return shape_of_meta(str(meta))


class Producer:
    def __init__(self, conn: QueueConnection, classifier: Callable[[JobSpec], JobSpec] | None = None) -> None:
        self.conn = conn
        #: Assigns a pool to jobs that name none (appliance.pools.classify), applied before the shape is taken.
        self.classifier = classifier

    def _classified(self, spec: JobSpec | Mapping[str, Any]) -> JobSpec:
        parsed = parse_spec(spec)
        return self.classifier(parsed) if self.classifier is not None else parsed

    def _submit_call(self, spec: JobSpec) -> tuple[str, str, Call]:
        """(job id, shape, call of submit.lua)."""
        job_id = spec.id or uuid.uuid4().hex
        shape, record = shape_of(spec)
        body = spec.model_dump(mode="json", exclude={"id"})
        body["id"] = job_id
        body["shape"] = shape
        encoded = json.dumps(body, separators=(",", ":"))
        limit = self.conn.settings.max_payload_bytes
        if len(encoded) > limit:  # json.dumps writes ASCII: characters are bytes
            raise PayloadTooLarge(f"job {job_id}", len(encoded), "max_payload_bytes", limit)
        k = self.conn.keys
        args = [
            job_id,
            encoded,
            shape,
            json.dumps(record, sort_keys=True, separators=(",", ":")),
            spec.service,
            spec.priority,
            self.conn.settings.priority_step_ms,
            spec.max_retries,
            int(spec.timeout_s * 1000) if spec.timeout_s else 0,
            k.wake_channel(shape),
            k.shapes_channel,
        ]
        return job_id, shape, self.conn.prepare("submit", args, shape=shape)

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Validate and enqueue one job; a caller-chosen id that exists already raises DuplicateJob."""
        parsed = self._classified(spec)
        job_id, shape, call = self._submit_call(parsed)
        try:
            raise_for_code(int(await self.conn.run(call, durable=True)), job_id)
        except NotDurable as exc:
            exc.job_ids = [job_id]
            raise
        return _job_from_spec(parsed, job_id, shape)

    async def submit_many(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        """Enqueue a batch, all or nothing: every job is validated and every caller-chosen id checked (against
        the queue and within the batch) before anything is written, then the jobs are enqueued in pipelined
        batches. InvalidJob or DuplicateJob means nothing was enqueued, so the caller may fix and retry.

        One race is left: another client submitting one of these ids between the check and the writes. Then
        DuplicateJob names it and its `submitted` lists the jobs of this call that were enqueued.
        """
        parsed = [self._classified(s) for s in specs]
        await self._check_ids([s.id for s in parsed if s.id is not None])
        calls = [self._submit_call(s) for s in parsed]
        jobs = [_job_from_spec(s, job_id, shape) for s, (job_id, shape, _) in zip(parsed, calls, strict=True)]
        codes = await self._write([call for _, _, call in calls])
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

    async def _check_ids(self, chosen: list[str]) -> None:
        seen: set[str] = set()
        for job_id in chosen:
            if job_id in seen:
                raise DuplicateJob(job_id, f"id {job_id!r} appears twice in the batch; nothing was submitted")
            seen.add(job_id)
        for start in range(0, len(chosen), SUBMIT_BATCH):
            part = chosen[start : start + SUBMIT_BATCH]
            for job_id, state in zip(
                part, await self.conn.client.hmget(self.conn.keys.state, part), strict=True
            ):
                if state is not None:
                    raise DuplicateJob(
                        job_id, f"a job with id {job_id!r} already exists; nothing was submitted"
                    )

    async def _write(self, calls: list[Call]) -> list[Any]:
        """Run the submit calls in order, stopping after the batch where one found its id taken."""
        codes: list[Any] = []
        if self.conn.cluster:
            for call in calls:
                codes.append(await self.conn.run(call, durable=True))
                if int(codes[-1]) == ScriptCode.DUPLICATE:
                    break
            return codes
        for start in range(0, len(calls), SUBMIT_BATCH):
            batch = calls[start : start + SUBMIT_BATCH]
            codes += await self.conn.run_pipelined(batch, durable=True)
            if any(int(code) == ScriptCode.DUPLICATE for code in codes[-len(batch) :]):
                break
        return codes

    async def cancel(self, job_id: str) -> str:
        """Cancel a job: 'cancelled' when it was waiting, 'requested' when its worker was told to stop it."""
        shape = await shape_of_job(self.conn, job_id)
        settings, k = self.conn.settings, self.conn.keys
        call = self.conn.prepare(
            "cancel", [job_id, settings.result_ttl_s * 1000, shape, k.cancel_channel], shape=shape
        )
        code = raise_for_code(int(await self.conn.run(call)), job_id)
        return "cancelled" if code == ScriptCode.OK else "requested"


def _job_from_spec(spec: JobSpec, job_id: str, shape: str) -> Job:
    return Job(
        **spec.model_dump(exclude={"id"}),
        id=job_id,
        shape=shape,
        status=JobStatus.PENDING,
        created_at=ms_to_datetime(time.time() * 1000),
    )
