"""Replicate connector: the predictions HTTP API, polled.

Payload: {"version": "<id>", "input": {...}} or {"model": "owner/name", "input": {...}}.
Statuses starting -> processing -> succeeded | failed | canceled (| aborted). Progress comes from the
last `NN%|` (tqdm) in the prediction's logs. Output URLs stay URLs unless extra `copy_outputs` is true,
then each URL output is downloaded into storage. The prediction id is remembered per job only in memory,
so a re-claimed job starts a new prediction (Replicate has no caller-chosen ids).

extra: poll_initial_s (0.5), poll_max_s (5), copy_outputs (False), request_timeout_s (30).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorResult,
    JobCancelled,
    OutputFile,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.http import JsonApi
from appliance.worker.connectors.tasks import AttemptKey, attempts_of
from appliance.worker.storage import OutputStorage

_PERCENT = re.compile(r"(\d{1,3})%\|")
DEFAULT_BASE_URL = "https://api.replicate.com"


def progress_from_logs(logs: str | None) -> float | None:
    """The last tqdm percentage in the logs, if any."""
    found = _PERCENT.findall(logs or "")
    return min(100.0, float(found[-1])) if found else None


class ReplicateConnector(Connector):
    name = "replicate"

    def __init__(self, *, options: Any, storage: OutputStorage) -> None:
        extra = dict(options.extra or {})
        self.api = JsonApi(
            options.base_url or DEFAULT_BASE_URL,
            options.api_key,
            service="Replicate",
            timeout_s=float(extra.get("request_timeout_s", 30.0)),
        )
        self.storage = storage
        self.default_timeout_s = float(options.default_timeout_s)
        self.max_concurrency = max(1, int(options.concurrency or 1))
        self.poll_initial_s = float(extra.get("poll_initial_s", 0.5))
        self.poll_max_s = float(extra.get("poll_max_s", 5.0))
        self.copy_outputs = bool(extra.get("copy_outputs", False))
        # Per attempt (job id, token): a lost attempt winding down never cancels a newer one of the same job.
        self._predictions: dict[AttemptKey, str | None] = {}
        self._cancelled: set[AttemptKey] = set()

    async def start(self) -> None:
        await self.api.start()

    async def close(self) -> None:
        await self.api.close()

    async def capabilities(self) -> ConnectorCapabilities:
        return ConnectorCapabilities(services=["replicate"])

    async def health(self) -> bool:
        return await self.api.answers("GET", "/v1/account")

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        for key in attempts_of(list(self._predictions), job_id, token):
            self._cancelled.add(key)
            prediction = self._predictions.get(key)
            if prediction is not None:
                await self.api.answers("POST", f"/v1/predictions/{prediction}/cancel")

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        body = {"input": job.payload.get("input") or {}}
        if job.payload.get("version"):
            path, body["version"] = "/v1/predictions", str(job.payload["version"])
        elif isinstance(job.payload.get("model"), str) and job.payload["model"].count("/") == 1:
            path = f"/v1/models/{job.payload['model']}/predictions"
        else:
            raise PermanentError("payload needs 'version' or 'model' (owner/name)", code="bad_payload")
        key = (job.id, job.token)
        self._cancelled.discard(key)
        self._predictions[key] = None  # known before its prediction id: a cancel meanwhile is remembered
        timeout = job.timeout_s or self.default_timeout_s
        try:
            async with asyncio.timeout(timeout):
                prediction = await self.api.request("POST", path, body)
                self._predictions[key] = str(prediction["id"])
                if key in self._cancelled:
                    await self.cancel(job.id, job.token)
                prediction = await self._poll(job.id, prediction, progress)
        except TimeoutError:
            await self.cancel(job.id, job.token)
            raise RetryableError(
                f"Replicate prediction exceeded the job timeout of {timeout:g}s", code="timeout"
            ) from None
        except KeyError:
            raise RetryableError("Replicate sent a prediction without an id", code="bad_response") from None
        finally:
            self._predictions.pop(key, None)
        return await self._result(job, prediction)

    async def _poll(
        self, job_id: str, prediction: dict[str, Any], progress: ProgressCallback
    ) -> dict[str, Any]:
        delay = self.poll_initial_s
        last = -1.0
        while prediction.get("status") not in ("succeeded", "failed", "canceled", "aborted"):
            percent = progress_from_logs(prediction.get("logs"))
            if percent is not None and percent > last:
                last = percent
                await progress(min(99.0, percent), prediction.get("status"))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)
            prediction = await self.api.request("GET", f"/v1/predictions/{prediction['id']}")
        return prediction

    async def _result(self, job: ConnectorJob, prediction: dict[str, Any]) -> ConnectorResult:
        status, pid = prediction.get("status"), str(prediction.get("id"))
        if status in ("canceled", "aborted"):
            if (job.id, job.token) in self._cancelled:
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
        if self.copy_outputs:
            urls = [
                u
                for u in (output if isinstance(output, list) else [output])
                if isinstance(u, str) and u.startswith(("http://", "https://"))
            ]
            outputs = [await self._copy(job.id, url, i) for i, url in enumerate(urls)]
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
