"""RunPod serverless connector: POST /v2/{endpoint}/run, poll /status/{id} (or /stream/{id}), /cancel/{id}.

Payload: {"endpoint_id": ... (or extra endpoint_id), "input": {...}, "policy"?: {...}}.
Statuses IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED | TIMED_OUT. When extra `stream` is true the
connector polls /stream/{id} and reports each streamed chunk as progress (percent from a chunk's
`progress` field when the handler yields one), collecting the chunks as `stream` in the result.
FAILED -> PermanentError (the handler raised), TIMED_OUT -> RetryableError, CANCELLED without our cancel ->
RetryableError.

extra: endpoint_id, stream (False), poll_initial_s (0.5), poll_max_s (5), request_timeout_s (30).
"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorResult,
    JobCancelled,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.http import JsonApi
from appliance.worker.connectors.tasks import AttemptKey, attempts_of
from appliance.worker.storage import OutputStorage

DEFAULT_BASE_URL = "https://api.runpod.ai"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class RunPodConnector(Connector):
    name = "runpod"

    def __init__(self, *, options: Any, storage: OutputStorage) -> None:
        extra = dict(options.extra or {})
        self.api = JsonApi(
            options.base_url or DEFAULT_BASE_URL,
            options.api_key,
            service="RunPod",
            timeout_s=float(extra.get("request_timeout_s", 30.0)),
        )
        self.storage = storage
        self.endpoint_id = extra.get("endpoint_id")
        self.stream = bool(extra.get("stream", False))
        self.default_timeout_s = float(options.default_timeout_s)
        self.max_concurrency = max(1, int(options.concurrency or 1))
        self.poll_initial_s = float(extra.get("poll_initial_s", 0.5))
        self.poll_max_s = float(extra.get("poll_max_s", 5.0))
        # (job id, token) -> (endpoint, runpod job id), None until /run answered; per attempt, so a lost
        # attempt winding down never cancels a newer one of the same job.
        self._runs: dict[AttemptKey, tuple[str, str] | None] = {}
        self._cancelled: set[AttemptKey] = set()

    async def start(self) -> None:
        await self.api.start()

    async def close(self) -> None:
        await self.api.close()

    async def capabilities(self) -> ConnectorCapabilities:
        return ConnectorCapabilities(services=["runpod"], extra={"endpoint_id": self.endpoint_id})

    async def health(self) -> bool:
        if not self.endpoint_id:
            return True  # nothing endpoint-independent to probe
        return await self.api.answers("GET", f"/v2/{self.endpoint_id}/health")

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        for key in attempts_of(list(self._runs), job_id, token):
            self._cancelled.add(key)
            run = self._runs.get(key)
            if run is not None:
                await self.api.answers("POST", f"/v2/{run[0]}/cancel/{run[1]}")

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        endpoint = job.payload.get("endpoint_id") or self.endpoint_id
        if not endpoint or not isinstance(job.payload.get("input", {}), dict):
            raise PermanentError(
                "payload needs 'input' (object) and an endpoint_id (payload or config)", code="bad_payload"
            )
        body: dict[str, Any] = {"input": job.payload.get("input") or {}}
        if isinstance(job.payload.get("policy"), dict):
            body["policy"] = job.payload["policy"]
        key = (job.id, job.token)
        self._cancelled.discard(key)
        self._runs[key] = None
        timeout = job.timeout_s or self.default_timeout_s
        chunks: list[Any] = []
        try:
            async with asyncio.timeout(timeout):
                run = await self.api.request("POST", f"/v2/{endpoint}/run", body)
                if "id" not in run:
                    raise RetryableError("RunPod /run answered without a job id", code="bad_response")
                self._runs[key] = (str(endpoint), str(run["id"]))
                if key in self._cancelled:
                    await self.cancel(job.id, job.token)
                state = await self._poll(str(endpoint), run, progress, chunks)
        except TimeoutError:
            await self.cancel(job.id, job.token)
            raise RetryableError(
                f"RunPod job exceeded the job timeout of {timeout:g}s", code="timeout"
            ) from None
        finally:
            self._runs.pop(key, None)
        return self._result(job, state, chunks)

    async def _poll(
        self, endpoint: str, state: dict[str, Any], progress: ProgressCallback, chunks: list[Any]
    ) -> dict[str, Any]:
        delay = self.poll_initial_s
        rid = state["id"]
        while state.get("status") not in TERMINAL:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)
            if self.stream:
                streamed = await self.api.request("GET", f"/v2/{endpoint}/stream/{rid}")
                for item in streamed.get("stream") or []:
                    chunks.append(item.get("output"))
                    out = item.get("output")
                    percent = out.get("progress") if isinstance(out, dict) else None
                    await progress(
                        min(99.0, float(percent))
                        if isinstance(percent, int | float)
                        else min(99.0, 100.0 * len(chunks) / (len(chunks) + 10)),
                        None,
                    )
                if streamed.get("status") in TERMINAL:
                    state = await self.api.request("GET", f"/v2/{endpoint}/status/{rid}")
                continue
            previous = state.get("status")
            state = await self.api.request("GET", f"/v2/{endpoint}/status/{rid}")
            if state.get("status") != previous and state.get("status") not in TERMINAL:
                await progress(0.0, str(state.get("status")))  # no percentages without streaming
        return state

    def _result(self, job: ConnectorJob, state: dict[str, Any], chunks: list[Any]) -> ConnectorResult:
        status, rid = state.get("status"), str(state.get("id"))
        if status == "CANCELLED":
            if (job.id, job.token) in self._cancelled:
                raise JobCancelled(f"RunPod job {rid} cancelled", details={"runpod_id": rid})
            raise RetryableError(f"RunPod job {rid} was cancelled by RunPod", code="cancelled_remotely")
        if status == "TIMED_OUT":
            raise RetryableError(f"RunPod job {rid} timed out", code="timeout", details={"runpod_id": rid})
        if status == "FAILED":
            raise PermanentError(
                f"RunPod job {rid} failed: {state.get('error')}",
                code="job_failed",
                details={"runpod_id": rid, "error": state.get("error")},
            )
        data = {
            "output": state.get("output"),
            "delay_time_ms": state.get("delayTime"),
            "execution_time_ms": state.get("executionTime"),
        }
        if chunks:
            data["stream"] = chunks
        return ConnectorResult(data=data, service_job_id=rid)
