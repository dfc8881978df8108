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

from typing import Any, ClassVar

from appliance.worker.connectors.base import (
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    JobCancelled,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.polling import PollingConnector, PollingOptions, RemoteJob
from appliance.worker.storage import OutputStorage

DEFAULT_BASE_URL = "https://api.runpod.ai"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


class RunPodOptions(PollingOptions):
    #: The serverless endpoint jobs go to unless their payload names one.
    endpoint_id: str | None = None
    #: Poll /stream/{id} and report each chunk as progress.
    stream: bool = False


class RunPodConnector(PollingConnector):
    name = "runpod"
    Options: ClassVar[type[ConnectorOptions]] = RunPodOptions
    options: RunPodOptions
    service = "RunPod"
    default_base_url = DEFAULT_BASE_URL
    terminal = TERMINAL

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        super().__init__(options=options, storage=storage)
        self.endpoint_id = self.options.endpoint_id

    async def capabilities(self) -> ConnectorCapabilities:
        return ConnectorCapabilities(services=["runpod"], extra={"endpoint_id": self.endpoint_id})

    async def health(self) -> bool:
        if not self.endpoint_id:
            return True  # nothing endpoint-independent to probe
        return await self.api.answers("GET", f"/v2/{self.endpoint_id}/health")

    def prepare(self, job: ConnectorJob) -> RemoteJob:
        endpoint = job.payload.get("endpoint_id") or self.endpoint_id
        if not endpoint or not isinstance(job.payload.get("input", {}), dict):
            raise PermanentError(
                "payload needs 'input' (object) and an endpoint_id (payload or config)", code="bad_payload"
            )
        body: dict[str, Any] = {"input": job.payload.get("input") or {}}
        if isinstance(job.payload.get("policy"), dict):
            body["policy"] = job.payload["policy"]
        return RemoteJob(job, f"/v2/{endpoint}/run", body, scope=str(endpoint))

    def status_path(self, remote: RemoteJob) -> str:
        return f"/v2/{remote.scope}/status/{remote.id}"

    def cancel_path(self, remote: RemoteJob) -> str:
        return f"/v2/{remote.scope}/cancel/{remote.id}"

    async def report(self, remote: RemoteJob, progress: ProgressCallback) -> None:
        if self.options.stream:
            return  # the chunks report progress
        status = remote.state.get("status")
        if remote.status is not None and status != remote.status:
            await progress(0.0, str(status))  # no percentages without streaming
        remote.status = status

    async def fetch(self, remote: RemoteJob, progress: ProgressCallback) -> dict[str, Any]:
        if not self.options.stream:
            return await super().fetch(remote, progress)
        streamed = await self.api.request("GET", f"/v2/{remote.scope}/stream/{remote.id}")
        for item in streamed.get("stream") or []:
            out = item.get("output")
            remote.chunks.append(out)
            percent = out.get("progress") if isinstance(out, dict) else None
            n = len(remote.chunks)
            await progress(
                min(99.0, float(percent))
                if isinstance(percent, int | float)
                else min(99.0, 100.0 * n / (n + 10)),
                None,
            )
        if streamed.get("status") in TERMINAL:
            return await super().fetch(remote, progress)
        return remote.state  # still running: the status document is read once the stream ends

    async def result(self, remote: RemoteJob, cancelled: bool) -> ConnectorResult:
        state, rid = remote.state, remote.id
        status = state.get("status")
        if status == "CANCELLED":
            if cancelled:
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
        if remote.chunks:
            data["stream"] = remote.chunks
        return ConnectorResult(data=data, service_job_id=rid)
