"""The job endpoints: submit (one, or a batch: all or nothing), read, list, cancel, retry, outputs."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from appliance.api.context import (
    Api,
    api_of,
    bearer,
    caller,
    job_id_of,
    job_json,
    owned_job,
    parse_json,
    read_body,
    read_json,
)
from appliance.api.idempotency import Idempotency
from appliance.api.keys import ApiKey, Scope
from appliance.api.models import BatchSubmission, JobSubmission
from appliance.api.onetrip import Refused, StaleKey
from appliance.api.problems import ProblemError, invalid, json_response, model_response, not_found
from appliance.queue import (
    InvalidJob,
    Job,
    JobAlreadyFinished,
    JobNotRetryable,
    JobSpec,
    JobStatus,
    PayloadTooLarge,
)

_OUTPUT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PAGE = 200


def _submission(body: Any, key: ApiKey, where: str = "") -> JobSubmission:
    """Validate one job of the body; the id is the server's and the customer the key's."""
    if not isinstance(body, dict):
        raise ProblemError(400, f"{where or 'the body'} must be a JSON object")
    if "id" in body:
        raise ProblemError(
            400,
            f"{where}id: job ids are chosen by the server; send an Idempotency-Key header to repeat safely",
        )
    named = body.get("customer_id")
    if named is not None and named != key.tenant:
        raise ProblemError(
            400, f"{where}customer_id: comes from the API key; this key's customer is {key.tenant!r}"
        )
    try:
        return JobSubmission.model_validate({**body, "customer_id": key.tenant})
    except ValidationError as exc:
        raise invalid(exc, where) from None


def _wait_s(request: web.Request, api: Api) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= api.settings.api.max_wait_s:
        raise ProblemError(400, f"wait: seconds from 0 to {api.settings.api.max_wait_s:g}, got {raw[:40]!r}")
    return wait


async def _submit_all(api: Api, key: ApiKey, subs: list[JobSubmission], ids: list[str]) -> list[Job]:
    """Admit against the key's in-flight limit, check and register webhooks (before the submit, so no event of
    the job can pass unseen), then submit all or nothing; a failure gives back what it took."""
    limit = key.max_in_flight or api.settings.api.max_in_flight
    refused = await api.limits.admit(key.id, limit, ids)
    if refused:
        raise ProblemError(429, refused.detail, headers={"Retry-After": str(refused.retry_after_s)})
    hooked: list[str] = []
    try:
        await _own_parents(api, key, subs)
        for i, sub in enumerate(subs):
            if sub.webhook is not None:
                await _check_webhook(api, sub, f"jobs.{i}.webhook.url" if len(subs) > 1 else "webhook.url")
        specs = [sub.spec(id=job_id) for sub, job_id in zip(subs, ids, strict=True)]
        for sub, job_id in zip(subs, ids, strict=True):
            if sub.webhook is not None:
                hooked.append(job_id)
                await api.webhooks.register(key.tenant, job_id, sub.webhook)
        return await api.queue.submit_many(specs) if len(specs) > 1 else [await api.queue.submit(specs[0])]
    except BaseException as exc:
        await api.limits.release(key.id, ids)
        if hooked:
            await api.webhooks.unregister(hooked)
        if isinstance(exc, PayloadTooLarge):
            raise ProblemError(413, str(exc)) from None
        if isinstance(exc, InvalidJob):
            raise ProblemError(400, str(exc)) from None
        raise


async def _own_parents(api: Api, key: ApiKey, subs: list[JobSubmission]) -> None:
    """A job may wait only for its own customer's jobs (its worker gets their results): another customer's job
    reads as unknown, exactly like one that does not exist."""
    parents = list(dict.fromkeys(p for sub in subs for p in sub.after))
    owners = await api.queue.customers_of(parents)
    for parent in parents:
        if owners.get(parent) != key.tenant:
            raise ProblemError(400, f"after: job {parent!r} not found (unknown id, or its record expired)")


async def _check_webhook(api: Api, sub: JobSubmission, field: str) -> None:
    from appliance.webhooks import WebhookRefused

    if api.webhooks is None:
        raise ProblemError(400, f"{field}: webhooks are unavailable here (the queue writes no event stream)")
    assert sub.webhook is not None
    try:
        await api.webhooks.check_url(sub.webhook.url)
    except WebhookRefused as exc:
        raise ProblemError(400, f"{field}: {exc}") from None


async def _submit_idempotent(
    request: web.Request, api: Api, key: ApiKey, body: Any, subs: list[JobSubmission]
) -> tuple[list[Job], bool]:
    """(jobs, replayed): a repeat of an earlier request with the same Idempotency-Key gets its jobs back."""
    ids = [uuid.uuid4().hex for _ in subs]
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return await _submit_all(api, key, subs, ids), False
    idem = Idempotency(api.queue.client, api.queue.keys, api.settings.api.idempotency_ttl_s)
    reservation = await idem.reserve(key.tenant, header, body, ids)
    if reservation.earlier is not None:
        jobs = [await api.queue.get(i) for i in reservation.earlier]
        if any(j is None for j in jobs):
            raise ProblemError(
                409,
                "the first request with this Idempotency-Key is still being processed (or its jobs expired)",
            )
        return [j for j in jobs if j is not None], True
    try:
        return await _submit_all(api, key, subs, ids), False
    except BaseException:
        await idem.forget(reservation)
        raise


async def submit(request: web.Request) -> web.Response:
    api = api_of(request)
    known = None
    # An Idempotency-Key, or acknowledgement by replicas (a WAIT after the submit), takes the ordinary path.
    if "Idempotency-Key" not in request.headers and not api.settings.queue.durable_replicas:
        key_id, token = bearer(request)
        known = api.onetrip.known(key_id, token) if key_id is not None else None
    if known is None:
        return await _submit_ordinary(request, api, await caller(request, Scope.SUBMIT))
    try:
        wait = _wait_s(request, api)
        sub = await _read_submission(request, api, known.key)
        job = None
        # A webhook is checked and registered before the submit, and parents (`after`) must be the caller's own
        # jobs: both take the ordinary path.
        if sub.after:
            pass
        elif not isinstance(sub, JobSubmission):
            job = await api.onetrip.submit(known, sub)
        elif sub.webhook is None:
            job = await api.onetrip.submit(known, sub.spec(customer_id=known.key.tenant))
    except StaleKey:
        job = None  # revoked since this process saw it: the ordinary path answers 401
    except Refused:
        raise
    except (ProblemError, PayloadTooLarge, InvalidJob) as exc:
        await caller(request, Scope.SUBMIT)  # the key's own refusal (401, 429, 403) comes first, as ever
        if isinstance(exc, ProblemError):
            raise
        raise ProblemError(413 if isinstance(exc, PayloadTooLarge) else 400, str(exc)) from None
    if job is None:
        key = await caller(request, Scope.SUBMIT)
        if not isinstance(sub, JobSubmission):
            sub = JobSubmission.model_validate(sub.model_dump(exclude_unset=True))
        (job,), _ = await _submit_idempotent(request, api, key, None, [sub])
    return await _answer(api, job, wait, False)


async def _submit_ordinary(request: web.Request, api: Api, key: ApiKey) -> web.Response:
    wait = _wait_s(request, api)
    body = await read_json(request, api.max_body)
    sub = _submission(body, key)
    (job,), replayed = await _submit_idempotent(request, api, key, body, [sub])
    return await _answer(api, job, wait, replayed)


async def _read_submission(request: web.Request, api: Api, key: ApiKey) -> JobSubmission | JobSpec:
    """The body, parsed and validated in one pass: as the queue's JobSpec of the key's customer when it is one
    as it stands (no webhook), else through `_submission`, whose errors name what is wrong (also for an `id`
    or another customer)."""
    raw = await read_body(request, api.max_body)
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValidationError:
        return _submission(parse_json(raw), key)
    if spec.id is not None or spec.customer_id not in (None, key.tenant):
        return _submission(parse_json(raw), key)
    spec.customer_id = key.tenant  # our own fresh object: nothing else holds it
    return spec


async def _answer(api: Api, job: Job, wait: float, replayed: bool) -> web.Response:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if wait > 0 and not job.status.finished:
        try:
            job = await api.queue.wait(job.id, timeout_s=wait)
        except TimeoutError:
            job = await api.queue.get(job.id) or job
    return model_response(job, 200 if job.status.finished else 202, headers)


async def submit_batch(request: web.Request) -> web.Response:
    api = api_of(request)
    key = await caller(request, Scope.SUBMIT)
    limit = min(api.max_body * api.settings.api.max_batch, 64 * 1024 * 1024)
    body = await read_json(request, limit)
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise ProblemError(400, "jobs: the body must be an object with a list of jobs")
    extra = sorted(set(body) - {"jobs"})
    if extra:
        raise ProblemError(400, f"{extra[0]}: unknown member (the body takes `jobs` only)")
    if not 1 <= len(body["jobs"]) <= api.settings.api.max_batch:
        raise ProblemError(400, f"jobs: 1 to {api.settings.api.max_batch} jobs, got {len(body['jobs'])}")
    subs = [_submission(item, key, f"jobs.{i}.") for i, item in enumerate(body["jobs"])]
    BatchSubmission(jobs=subs)  # the model the OpenAPI document shows
    jobs, replayed = await _submit_idempotent(request, api, key, body, subs)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return json_response({"jobs": [job_json(j) for j in jobs]}, 202, headers)


async def get_job(request: web.Request) -> web.Response:
    api = api_of(request)
    key = await caller(request, Scope.READ)
    return json_response(job_json(await owned_job(api, key, job_id_of(request))))


async def cancel_job(request: web.Request) -> web.Response:
    api = api_of(request)
    key = await caller(request, Scope.CANCEL)
    job = await owned_job(api, key, job_id_of(request))
    try:
        outcome = await api.queue.cancel(job.id)
    except JobAlreadyFinished:
        raise ProblemError(409, f"job {job.id!r} has already finished ({job.status.value})") from None
    now = await api.queue.get(job.id) or job
    return json_response({"outcome": outcome, "job": job_json(now)}, 200 if outcome == "cancelled" else 202)


async def retry_job(request: web.Request) -> web.Response:
    api = api_of(request)
    key = await caller(request, Scope.SUBMIT)
    job = await owned_job(api, key, job_id_of(request))
    limit = key.max_in_flight or api.settings.api.max_in_flight
    refused = await api.limits.admit(key.id, limit, [job.id])
    if refused:
        raise ProblemError(429, refused.detail, headers={"Retry-After": str(refused.retry_after_s)})
    try:
        await api.queue.retry(job.id)
    except JobNotRetryable:
        await api.limits.release(key.id, [job.id])
        raise ProblemError(
            409, f"job {job.id!r} is {job.status.value}; only failed or dead jobs can be retried"
        ) from None
    return json_response(job_json(await api.queue.get(job.id) or job), 202)


def _status_filter(raw: str | None) -> JobStatus | None:
    if raw is None:
        return None
    try:
        return JobStatus(raw)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise ProblemError(400, f"status: one of {known}; got {raw[:40]!r}") from None


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ProblemError(400, f"{name}: a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


async def list_jobs(request: web.Request) -> web.Response:
    api = api_of(request)
    key = await caller(request, Scope.READ)
    status = _status_filter(request.query.get("status"))
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE) or 50
    cursor = _int_param(request, "cursor", None, 0, 2**62)
    jobs, after = await api.queue.tenant_page(key.tenant, status, limit, cursor)
    return json_response(
        {"jobs": [job_json(j) for j in jobs], "next_cursor": None if after is None else str(after)}
    )


async def output(request: web.Request) -> web.StreamResponse:
    api = api_of(request)
    key = await caller(request, Scope.READ)
    job = await owned_job(api, key, job_id_of(request))
    name = request.match_info["name"]
    if not _OUTPUT_RE.match(name):
        raise not_found(f"output {name[:200]!r} of job {job.id!r}")
    storage = api.settings.storage
    stored_id = _UNSAFE.sub("_", job.id).lstrip(".")  # as the worker's storage names the job's folder
    if storage.backend == "s3":
        return await _presigned(api, f"{stored_id}/{name}")
    path = Path(storage.local_dir) / stored_id / name
    if not await asyncio.to_thread(path.is_file):
        raise not_found(f"output {name!r} of job {job.id!r}")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def _presigned(api: Api, key: str) -> web.Response:
    """A redirect to a presigned GET of the object (boto3 signs locally: no request to S3 here)."""
    s3 = api.settings.storage.s3
    prefix = "/".join(p for p in s3.prefix.split("/") if p not in ("", ".", ".."))
    object_key = f"{prefix}/{key}" if prefix else key
    if s3.public_base_url:
        raise web.HTTPFound(f"{s3.public_base_url.rstrip('/')}/{object_key}")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.resolve_secret_access_key(),
    )
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": object_key}, ExpiresIn=s3.presign_expiry_s
    )
    raise web.HTTPFound(url)


async def dead_webhooks(request: web.Request) -> web.Response:
    """The caller's tenant's webhook deliveries that were given up, newest first."""
    api = api_of(request)
    key = await caller(request, Scope.READ)
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE) or 50
    cursor = request.query.get("cursor")
    if cursor is not None and not re.fullmatch(r"[A-Za-z0-9:._-]{1,200}", cursor):
        raise ProblemError(400, f"cursor: as a page's next_cursor gave it, got {cursor[:40]!r}")
    if api.webhooks is None:
        return json_response({"items": [], "next_cursor": None})
    page = await api.webhooks.dead(key.tenant, limit, cursor)
    return json_response(page.model_dump(mode="json"))


async def webhook_secret(request: web.Request) -> web.Response:
    """The caller's tenant's signing secret (admin scope): what its receiver verifies with. POST rotates it (the
    old one keeps signing beside the new one for webhooks.max_age_s)."""
    api = api_of(request)
    key = await caller(request, Scope.ADMIN)
    if api.webhooks is None:
        raise ProblemError(409, "webhooks are unavailable here (the queue writes no event stream)")
    secret = await api.webhooks.secret(key.tenant, rotate=request.method == "POST")
    return json_response({"secret": secret}, headers={"Cache-Control": "no-store"})
