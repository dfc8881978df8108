"""What every handler of one API process shares, and the request helpers (who is calling, the body, ids)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance.api.hub import EventHub
from appliance.api.keys import ApiKey, KeyStore, Scope, check, key_id_of
from appliance.api.limits import Limits
from appliance.api.metrics import ApiMetrics
from appliance.api.onetrip import OneTrip
from appliance.api.problems import ProblemError, not_found
from appliance.config.schema import Settings
from appliance.queue import Job, Queue
from appliance.queue.models import ID_PATTERN

_ID_RE = re.compile(ID_PATTERN)


@dataclass
class Api:
    queue: Queue
    settings: Settings
    store: KeyStore
    limits: Limits
    hub: EventHub
    metrics: ApiMetrics
    #: POST /v1/jobs in one round trip, for keys this process has verified.
    onetrip: OneTrip
    #: appliance.webhooks.Webhooks, or None where the queue writes no event stream.
    webhooks: Any = None

    @property
    def max_body(self) -> int:
        """Largest body of one job: the queue's limit on the stored job, plus room for the webhook member."""
        return self.settings.queue.max_payload_bytes + 16 * 1024


API_KEY: web.AppKey[Api] = web.AppKey("api", Api)


def api_of(request: web.Request) -> Api:
    return request.app[API_KEY]


def bearer(request: web.Request) -> tuple[str | None, str]:
    """(key id, token) of the request's `Authorization: Bearer` token; the id is None when there is none or
    it is malformed."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return (key_id_of(token) if scheme.lower() == "bearer" else None), token


async def caller(request: web.Request, scope: Scope) -> ApiKey:
    """The request's API key (a bearer token, read from Redis on each request: a revoked key fails at once),
    counted against its rate, and holding `scope` (admin holds every scope): 401, 429 or 403 otherwise."""
    api = api_of(request)
    key_id, token = bearer(request)
    raw, count, wait_ms = None, 0, 0
    if key_id is not None:  # one round trip: the key's record and its count in this second (rate.lua)
        raw, count, wait_ms = await api.limits.request(api.store.key, key_id)
    key = check(token, raw)
    if key is None:
        raise ProblemError(
            401,
            "a valid API key is required: Authorization: Bearer apk_...",
            headers={"WWW-Authenticate": "Bearer"},
        )
    assert raw is not None
    api.onetrip.remember(key, raw)  # its next submit takes one round trip
    limit = key.rate_per_s or api.settings.api.rate_per_s
    if count > limit:
        detail = f"over this key's limit of {limit} requests per second"
        raise ProblemError(429, detail, headers={"Retry-After": str(max(1, -(-wait_ms // 1000)))})
    if scope not in key.scopes and Scope.ADMIN not in key.scopes:
        raise ProblemError(403, f"this API key lacks the {scope.value!r} scope")
    return key


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body; 413 past `limit` bytes (checked while reading, never buffering more)."""
    if request.content_length is not None and request.content_length > limit:
        raise ProblemError(413, f"the body is {request.content_length} bytes, over the limit of {limit}")
    content = request.content
    if content.is_eof():  # all of it has arrived (a small body comes with its headers): take it, no awaiting
        whole = content.read_nowait()
        if len(whole) > limit:
            raise ProblemError(413, f"the body is over the limit of {limit} bytes")
        return whole
    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
        if len(data) > limit:
            raise ProblemError(413, f"the body is over the limit of {limit} bytes")
    return bytes(data)


def parse_json(data: bytes) -> Any:
    """The body as JSON; 400 when it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"the body is not valid JSON: {exc}") from None


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON; 413 past `limit` bytes, 400 when it is not JSON."""
    return parse_json(await read_body(request, limit))


def job_id_of(request: web.Request) -> str:
    """The `{id}` of the path; an id no job can have answers 404 like an unknown one."""
    job_id = request.match_info["id"]
    if not _ID_RE.match(job_id):
        raise not_found(f"job {job_id[:140]!r}")
    return job_id


async def owned_job(api: Api, key: ApiKey, job_id: str) -> Job:
    """The job, if it is the caller's tenant's: another tenant's job is 404 like a missing one, so ids leak
    nothing."""
    job = await api.queue.get(job_id)
    if job is None or job.customer_id != key.tenant:
        raise not_found(f"job {job_id!r}")
    return job


def job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
