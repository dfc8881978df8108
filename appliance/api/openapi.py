"""The OpenAPI 3.1 document of the API, generated from the pydantic models (JSON Schema 2020-12, which OpenAPI
3.1 uses as is). Served at /openapi.json and committed as docs/openapi.json (a test keeps the two equal:
`python -m appliance.api.openapi > docs/openapi.json` regenerates it)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from appliance.api.models import (
    BatchResult,
    BatchSubmission,
    CancelResult,
    Health,
    JobList,
    JobSubmission,
    LiveEvent,
    MachineList,
    PoolList,
    WebhookSecret,
)
from appliance.api.problems import Problem
from appliance.queue.models import Job, JobStatus, QueueStats
from appliance.webhooks import DeadPage

REF = "#/components/schemas/{model}"
INPUTS: tuple[type[BaseModel], ...] = (JobSubmission, BatchSubmission)
OUTPUTS: tuple[type[BaseModel], ...] = (
    Job,
    JobList,
    BatchResult,
    CancelResult,
    QueueStats,
    MachineList,
    PoolList,
    Health,
    Problem,
    LiveEvent,
    DeadPage,
    WebhookSecret,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref(Problem)}}}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}
COMMON = {
    "400": _problem("A parameter or the body is wrong (the detail names it)."),
    "401": _problem("No valid API key."),
    "403": _problem("The key lacks the scope this operation needs."),
    "429": {**_problem("Over the key's rate or in-flight limit."), "headers": RETRY_AFTER},
}
JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A job id; another tenant's job answers 404, like an unknown one.",
}
NOT_FOUND = {"404": _problem("No such job for this key's tenant.")}
PAGE = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "next_cursor of the last page.",
    },
]


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "responses": {**responses, **COMMON}, **extra}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


TOO_LARGE = {"413": _problem("The body or the job is over the size limit (queue.max_payload_bytes).")}
CONFLICT = {"409": _problem("The Idempotency-Key was used with another body.")}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}}


def _paths() -> dict[str, Any]:
    return {**_submit_paths(), **_job_paths(), **_live_paths(), **_other_paths(), **_open_paths()}


def _submit_paths() -> dict[str, Any]:
    too_large, conflict, idem = TOO_LARGE, CONFLICT, IDEMPOTENCY_KEY
    return {
        "/v1/jobs": {
            "post": _op(
                "submitJob",
                "Submit a job (scope submit); with ?wait=S answer with the finished job when it ends in time.",
                {
                    "200": _json(Job, "The job finished within ?wait."),
                    "202": _json(Job, "The job is queued (or still running after ?wait)."),
                    **too_large,
                    **conflict,
                },
                parameters=[
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                    idem,
                ],
                requestBody=_body(JobSubmission),
            ),
            "get": _op(
                "listJobs",
                "The caller's jobs, newest first, a page at a time (scope read).",
                {"200": _json(JobList, "One page.")},
                parameters=[
                    {"name": "status", "in": "query", "schema": {"enum": [s.value for s in JobStatus]}},
                    *PAGE,
                ],
            ),
        },
        "/v1/jobs/batch": {
            "post": _op(
                "submitBatch",
                "Submit several jobs: all or none (scope submit).",
                {"202": _json(BatchResult, "Every job is queued."), **too_large, **conflict},
                parameters=[idem],
                requestBody=_body(BatchSubmission),
            )
        },
    }


def _job_paths() -> dict[str, Any]:
    return {
        "/v1/jobs/{id}": {
            "parameters": [JOB_ID],
            "get": _op("getJob", "A job (scope read).", {"200": _json(Job, "The job."), **NOT_FOUND}),
            "delete": _op(
                "cancelJob",
                "Cancel a waiting or running job (scope cancel).",
                {
                    "200": _json(CancelResult, "Cancelled."),
                    "202": _json(CancelResult, "Its worker was told to stop it."),
                    "409": _problem("The job has already finished."),
                    **NOT_FOUND,
                },
            ),
        },
        "/v1/jobs/{id}/retry": {
            "parameters": [JOB_ID],
            "post": _op(
                "retryJob",
                "Put a failed or dead job back in line (scope submit).",
                {
                    "202": _json(Job, "Back in line."),
                    "409": _problem("The job is not failed or dead."),
                    **NOT_FOUND,
                },
            ),
        },
        "/v1/jobs/{id}/outputs/{name}": {
            "parameters": [
                JOB_ID,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": _op(
                "getOutput",
                "One output file of a job: streamed (local storage) or a redirect to a presigned URL (S3).",
                {
                    "200": {
                        "description": "The file.",
                        "content": {"application/octet-stream": {"schema": {}}},
                    },
                    "302": {"description": "Where the file is (S3)."},
                    "404": _problem("No such job or output."),
                },
            ),
        },
    }


def _live_paths() -> dict[str, Any]:
    return {
        "/v1/jobs/{id}/events": {
            "parameters": [JOB_ID],
            "get": _op(
                "jobEvents",
                "The job's lifecycle events as Server-Sent Events (data: LiveEvent), then `end` with the job.",
                {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {}}},
                    },
                    **NOT_FOUND,
                },
                parameters=[{"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
            ),
        },
    }


def _other_paths() -> dict[str, Any]:
    return {
        "/v1/ws": {
            "get": _op(
                "websocket",
                "A WebSocket following many jobs (see docs/api.md).",
                {"101": {"description": "Switching to the WebSocket protocol."}},
            )
        },
        "/v1/webhooks/dead": {
            "get": _op(
                "deadWebhooks",
                "Webhook deliveries given up, newest first (scope read).",
                {"200": _json(DeadPage, "One page.")},
                parameters=PAGE,
            )
        },
        "/v1/webhooks/secret": {
            "get": _op(
                "webhookSecret",
                "The tenant's webhook signing secret (scope admin).",
                {
                    "200": _json(WebhookSecret, "The secret."),
                    "409": _problem("Webhooks are unavailable here."),
                },
            ),
            "post": _op(
                "rotateWebhookSecret",
                "A new signing secret; the old one still signs for webhooks.max_age_s (scope admin).",
                {
                    "200": _json(WebhookSecret, "The new secret."),
                    "409": _problem("Webhooks are unavailable here."),
                },
            ),
        },
        "/v1/stats": {
            "get": _op(
                "stats", "Queue depths and totals (scope admin).", {"200": _json(QueueStats, "Stats.")}
            )
        },
        "/v1/machines": {
            "get": _op(
                "machines", "The fleet's machines (scope admin).", {"200": _json(MachineList, "Machines.")}
            )
        },
        "/v1/pools": {
            "get": _op(
                "pools", "The pools and their backlog (scope admin).", {"200": _json(PoolList, "Pools.")}
            )
        },
    }


def _open_paths() -> dict[str, Any]:
    def plain(op_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"operationId": op_id, "summary": summary, "security": [], "responses": responses}}

    return {
        "/healthz": plain("healthz", "Liveness.", {"200": _json(Health, "Alive.")}),
        "/readyz": plain(
            "readyz",
            "Readiness: Redis answers.",
            {"200": _json(Health, "Ready."), "503": _problem("Not ready.")},
        ),
        "/metrics": plain(
            "metrics",
            "Prometheus metrics.",
            {
                "200": {
                    "description": "Text exposition.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/openapi.json": plain(
            "openapi",
            "This document.",
            {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {}}}}},
        ),
    }


@cache
def document() -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((m, "validation") for m in INPUTS),
        *((m, "serialization") for m in OUTPUTS),
    ]
    _, schemas = models_json_schema(pairs, ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "appliance job API",
            "version": "1",
            "description": "Jobs over HTTP for one queue: API keys per tenant, live progress, signed webhooks.",
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "apk_... API key"}
            },
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, sort_keys=True))
