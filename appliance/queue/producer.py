"""The producer side of the queue: submit jobs (one or a batch) and cancel them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from appliance.queue.bodyform import stored_body
from appliance.queue.conn import Call, QueueConnection
from appliance.queue.connections import prefixed
from appliance.queue.errors import (
    DuplicateJob,
    InvalidJob,
    JobNotFound,
    NotDurable,
    ParentNotFound,
    PayloadTooLarge,
    QueueError,
    ScriptCode,
    raise_for_code,
)
from appliance.queue.jobbody import submitted_job
from appliance.queue.models import Job, JobSpec, JobStatus, ms_to_datetime
from appliance.queue.records import shape_of_meta
from appliance.queue.shapes import shape_of
from appliance.queue.specs import SPECS

#: Jobs per round trip when submitting in bulk.
SUBMIT_BATCH = 500
#: Shapes whose id, record and submit KEYS a producer keeps (cleared when full).
SHAPE_CACHE = 1024
#: Where submit.lua's KEYS name the job's customer's index (the cached KEYS hold that of no customer).
_TENANT_AT = SPECS["submit"].keys.index("tenant")
#: A plain job (no customer, parents or start time) is called with submit.lua's first 14 KEYS and 15 ARGV only
#: (its header): each argument costs the server ~1 µs per call.
_PLAIN_KEYS = SPECS["submit"].keys.index("fair_weights") + 1
#: The spec's validator (pydantic's, which `JobSpec.model_validate` calls).
_VALIDATE = JobSpec.__pydantic_validator__.validate_python
#: What submit.lua's code says the new job's status is.
_SUBMITTED = {
    ScriptCode.OK: JobStatus.PENDING,
    ScriptCode.BLOCKED: JobStatus.BLOCKED,
    ScriptCode.FAILED: JobStatus.FAILED,
    ScriptCode.CANCELLED: JobStatus.CANCELLED,
}
#: The same by the script's integer (a lookup without the enum's constructor, ~1 µs).
_SUBMITTED_BY_CODE = {int(code): status for code, status in _SUBMITTED.items()}


def field_problems(exc: ValidationError, what: str) -> str:
    """`field.path: message; ...` for every error of a validation (`what` names a model-level one)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or what}: {str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def parse_spec(data: Mapping[str, Any] | JobSpec) -> JobSpec:
    """Validate a submitted job; the error names every offending field."""
    if isinstance(data, JobSpec):
        return data
    try:
        # The validator itself: `model_validate` is a Python layer over it (~0.7 µs of a submit's 4).
        return _VALIDATE(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise InvalidJob(f"invalid job: {field_problems(exc, 'job')}") from None


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
        #: (service, pool) of jobs with default requirements -> (shape, record JSON, submit KEYS, those of a
        #: plain job); and shape -> the same, for the others: worked out once, not per job (and the same KEYS
        #: lists each time, which the connection packs once: connections.py).
        self._plain: dict[tuple[str, str | None], tuple[str, str, list[str], list[str]]] = {}
        self._by_shape: dict[str, tuple[str, str, list[str], list[str]]] = {}
        #: shape -> submit.lua's ARGV[1..10] (the same for every job of the shape), for the settings object
        #: `_fixed_for`: one list per shape, which the connection packs once with the KEYS (connections.py).
        self._fixed: dict[str, list[Any]] = {}
        self._fixed_for: object = None

    def _classified(self, spec: JobSpec | Mapping[str, Any]) -> JobSpec:
        parsed = parse_spec(spec)
        return self.classifier(parsed) if self.classifier is not None else parsed

    def _shape(self, spec: JobSpec) -> tuple[str, str, list[str], list[str]]:
        """(shape id, canonical record JSON, KEYS of submit.lua, KEYS of a plain job) of a job."""
        plain = not spec.requirements.model_fields_set  # all defaults: the shape depends on these two only
        if plain and (found := self._plain.get((spec.service, spec.pool))) is not None:
            return found
        shape, record = shape_of(spec)
        found = self._by_shape.get(shape)
        if found is None:
            if len(self._by_shape) >= SHAPE_CACHE:
                self._by_shape.clear()
                self._plain.clear()
            encoded = json.dumps(record, sort_keys=True, separators=(",", ":"))
            keys = SPECS["submit"].build(self.conn.keys, shape=shape)
            found = self._by_shape[shape] = (shape, encoded, keys, keys[:_PLAIN_KEYS])
        if plain:
            self._plain[(spec.service, spec.pool)] = found
        return found

    def _submit_call(self, spec: JobSpec) -> tuple[str, str, Call]:
        """(job id, shape, call of submit.lua)."""
        # 128 random bits as 32 hex digits, like uuid4().hex (a fifth of its cost: no UUID object).
        job_id = spec.id or os.urandom(16).hex()
        shape, record, keys, plain_keys = self._shape(spec)
        # Only what differs from the defaults, then id and shape (bodyform.stored_body: ~90 bytes for a plain
        # job, not ~400: Redis's Lua hashes every byte of it at submit and at each claim, and keeps it in memory).
        encoded = stored_body(spec, job_id, shape)
        size = len(encoded)
        limit = self.conn.settings.max_payload_bytes
        if size > limit:
            raise PayloadTooLarge(f"job {job_id}", size, "max_payload_bytes", limit)
        settings = self.conn.settings
        fixed = self._fixed.get(shape)
        if fixed is None or self._fixed_for is not settings:
            if self._fixed_for is not settings or len(self._fixed) >= SHAPE_CACHE:
                self._fixed, self._fixed_for = {}, settings
            fixed = self._fixed[shape] = [
                *self.conn.common(),
                shape,
                record,
                spec.service,
                settings.priority_step_ms,
                self.conn.wake_check,
                self.conn.keys.shapes_channel,
            ]
        args = prefixed(
            fixed,
            [
                job_id,
                encoded,
                spec.priority,
                spec.max_retries,
                int(spec.timeout_s * 1000) if spec.timeout_s else 0,
            ],
        )
        if not spec.customer_id and not spec.after and spec.run_at is None and spec.delay_s is None:
            return job_id, shape, ("submit", plain_keys, args)  # a plain job: the short form
        args += [
            int(spec.run_at.timestamp() * 1000) if spec.run_at is not None else "",
            int(spec.delay_s * 1000) if spec.delay_s is not None else "",
            spec.customer_id or "",
            spec.on_parent_failure.value if spec.after else "",
            settings.result_ttl_s * 1000,
            *spec.after,
        ]
        if spec.customer_id:  # the cached KEYS hold the tenant index of no customer
            keys = list(keys)
            keys[_TENANT_AT] = self.conn.keys.tenant_jobs(spec.customer_id)
        return job_id, shape, ("submit", keys, args)

    def prepare(self, spec: JobSpec | Mapping[str, Any]) -> tuple[Job, Call]:
        """The job as `submit` would return it and the submit.lua call that enqueues it, for a caller that runs
        the call inside a script of its own (the HTTP API checks a key and its limits in the same round trip);
        check the script's code with `raise_for_code`."""
        parsed = self._classified(spec)
        job_id, shape, call = self._submit_call(parsed)
        return _job_from_spec(parsed, job_id, shape), call

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Validate and enqueue one job; a caller-chosen id that exists already raises DuplicateJob."""
        parsed = self._classified(spec)
        job_id, shape, call = self._submit_call(parsed)
        built: list[Job] = []

        def build() -> None:  # while submit.lua runs in Redis: the client's work overlaps the server's
            if not built:
                built.append(_job_from_spec(parsed, job_id, shape))

        try:
            code = int(await self.conn.run(call, durable=True, meanwhile=build))
        except NotDurable as exc:
            exc.job_ids = [job_id]
            raise
        status = _SUBMITTED_BY_CODE.get(code)
        if status is None:
            if code == ScriptCode.PARENT_NOT_FOUND:
                raise ParentNotFound(job_id, await self._missing_parent(parsed.after))
            raise_for_code(code, job_id)
            raise QueueError(f"submit.lua returned unknown code {code} for job {job_id!r}")
        build()
        built[0].status = status
        return built[0]

    async def _missing_parent(self, parents: list[str]) -> str | None:
        """The first of `parents` that has no record (None when they all have one now)."""
        states = await self.conn.client.hmget(self.conn.keys.state, parents) if parents else []
        return next((p for p, state in zip(parents, states, strict=True) if state is None), None)

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
        await self._check_parents(parsed, [job_id for job_id, _, _ in calls])
        jobs = [_job_from_spec(s, job_id, shape) for s, (job_id, shape, _) in zip(parsed, calls, strict=True)]
        codes = await self._write([call for _, _, call in calls])
        written = []
        for job, code in zip(jobs, codes, strict=False):
            if int(code) in _SUBMITTED:
                job.status = _SUBMITTED[ScriptCode(int(code))]
                written.append(job)
        for job, code in zip(jobs, codes, strict=False):
            if int(code) not in _SUBMITTED:
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

    async def _check_parents(self, parsed: list[JobSpec], ids: list[str]) -> None:
        """Every parent a job of the batch names exists, or comes earlier in the batch (the jobs are written in
        order); ParentNotFound names the first that does not, before anything is written."""
        position = {job_id: index for index, job_id in enumerate(ids)}
        asked = list(
            dict.fromkeys(
                p for i, spec in enumerate(parsed) for p in spec.after if position.get(p, len(ids)) >= i
            )
        )
        known: set[str] = set()
        for start in range(0, len(asked), SUBMIT_BATCH):
            part = asked[start : start + SUBMIT_BATCH]
            states = await self.conn.client.hmget(self.conn.keys.state, part)
            known.update(p for p, state in zip(part, states, strict=True) if state is not None)
        for index, spec in enumerate(parsed):
            for parent in spec.after:
                if parent not in known and position.get(parent, len(ids)) >= index:
                    raise ParentNotFound(ids[index], parent)

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
            "cancel",
            [job_id, settings.result_ttl_s * 1000, shape, k.cancel_channel, self.conn.wake_check],
            shape=shape,
        )
        code = raise_for_code(int(await self.conn.run(call)), job_id)
        return "cancelled" if code == ScriptCode.OK else "requested"

    async def retry(self, job_id: str) -> None:
        """Put a failed or dead job back in line with its retries renewed (dead-letter replay); JobNotRetryable
        when it is waiting, running, completed or cancelled."""
        shape = await shape_of_job(self.conn, job_id)
        call = self.conn.prepare("retry", [job_id, shape, self.conn.wake_check], shape=shape)
        raise_for_code(int(await self.conn.run(call)), job_id)


def _job_from_spec(spec: JobSpec, job_id: str, shape: str) -> Job:
    now_ms = time.time() * 1000
    starts = spec.run_at
    if starts is None and spec.delay_s is not None:  # by this clock; the script used the server's
        starts = ms_to_datetime(now_ms + spec.delay_s * 1000)
    # From the validated spec's fields as they are, without validating them again (jobbody.py).
    next_attempt_at = starts if starts is not None and starts.timestamp() * 1000 > now_ms else None
    return submitted_job(spec, job_id, shape, ms_to_datetime(now_ms), next_attempt_at)
