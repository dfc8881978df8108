"""Replicate connector: the predictions HTTP API, polled (`polling.PollingConnector`).

Payload: {"version": "<id>", "input": {...}} or {"model": "owner/name", "input": {...}}.
Statuses starting -> processing -> succeeded | failed | canceled (| aborted). Progress comes from the
last `NN%|` (tqdm) in the prediction's logs. Output URLs stay URLs unless extra `copy_outputs` is true,
then each URL output is downloaded into storage.

extra: poll_initial_s (0.5), poll_max_s (5), copy_outputs (False), request_timeout_s (30).

Not the official `replicate` client: see docs/connectors.md ("Why not the `replicate` package").
"""

from __future__ import annotations

import re
from typing import ClassVar

import aiohttp

from appliance.worker.connectors.base import (
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    JobCancelled,
    OutputFile,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.polling import PollingConnector, PollingOptions, RemoteJob

_PERCENT = re.compile(r"(\d{1,3})%\|")
DEFAULT_BASE_URL = "https://api.replicate.com"


def progress_from_logs(logs: str | None) -> float | None:
    """The last tqdm percentage in the logs, if any."""
    found = _PERCENT.findall(logs or "")
    return min(100.0, float(found[-1])) if found else None


class ReplicateOptions(PollingOptions):
    #: Download URL outputs into our storage instead of handing Replicate's (expiring) URLs on.
    copy_outputs: bool = False


class ReplicateConnector(PollingConnector):
    name = "replicate"
    Options: ClassVar[type[ConnectorOptions]] = ReplicateOptions
    options: ReplicateOptions
    service = "Replicate"
    noun = "prediction"
    default_base_url = DEFAULT_BASE_URL
    terminal = frozenset({"succeeded", "failed", "canceled", "aborted"})

    async def capabilities(self) -> ConnectorCapabilities:
        return ConnectorCapabilities(services=["replicate"])

    async def health(self) -> bool:
        return await self.api.answers("GET", "/v1/account")

    def prepare(self, job: ConnectorJob) -> RemoteJob:
        body = {"input": job.payload.get("input") or {}}
        if job.payload.get("version"):
            body["version"] = str(job.payload["version"])
            return RemoteJob(job, "/v1/predictions", body)
        model = job.payload.get("model")
        if isinstance(model, str) and model.count("/") == 1:
            return RemoteJob(job, f"/v1/models/{model}/predictions", body)
        raise PermanentError("payload needs 'version' or 'model' (owner/name)", code="bad_payload")

    def status_path(self, remote: RemoteJob) -> str:
        return f"/v1/predictions/{remote.id}"

    def cancel_path(self, remote: RemoteJob) -> str:
        return f"/v1/predictions/{remote.id}/cancel"

    async def report(self, remote: RemoteJob, progress: ProgressCallback) -> None:
        percent = progress_from_logs(remote.state.get("logs"))
        if percent is not None and percent > remote.percent:
            remote.percent = percent
            await progress(min(99.0, percent), remote.state.get("status"))

    async def result(self, remote: RemoteJob, cancelled: bool) -> ConnectorResult:
        prediction = remote.state
        status, pid = prediction.get("status"), remote.id
        if status in ("canceled", "aborted"):
            if cancelled:
                raise JobCancelled(f"Replicate prediction {pid} canceled", details={"prediction_id": pid})
            raise RetryableError(f"Replicate prediction {pid} was {status}", code=str(status))
        if status == "failed":
            raise PermanentError(
                f"Replicate prediction {pid} failed: {prediction.get('error')}",
                code="prediction_failed",
                details={"prediction_id": pid, "error": prediction.get("error")},
            )
        output = prediction.get("output")
        outputs: list[OutputFile] = []
        if self.options.copy_outputs:
            urls = [
                u
                for u in (output if isinstance(output, list) else [output])
                if isinstance(u, str) and u.startswith(("http://", "https://"))
            ]
            outputs = [await self._copy(remote.job.id, url, i) for i, url in enumerate(urls)]
        return ConnectorResult(
            data={"output": output, "metrics": prediction.get("metrics") or {}, "status": status},
            outputs=outputs,
            service_job_id=pid,
        )

    async def _copy(self, job_id: str, url: str, index: int) -> OutputFile:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                if resp.status != 200:
                    raise RetryableError(
                        f"output {index} download answered {resp.status}", code="output_missing"
                    )
                data = await resp.read()
                ctype = resp.content_type or "application/octet-stream"
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RetryableError(f"output {index} download failed", code="output_missing") from exc
        name = url.rsplit("/", 1)[-1].split("?")[0] or f"output-{index}"
        return await self.storage.put(job_id, name, data, ctype, kind="files")
