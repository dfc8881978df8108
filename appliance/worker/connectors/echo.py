"""Echo: returns its payload; for demos and for testing the worker runtime end to end.

Payload knobs: `{"delay": seconds}` sleeps in steps reporting progress, `{"fail": "retryable"|"permanent",
"message": ...}` raises that error, `{"output": {"name": ..., "text": ...}}` stores a small text output. A job
submitted with `after` gets its parents' results back under `parents` (ConnectorJob.parents).
"""

from __future__ import annotations

import asyncio

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.tasks import Attempts
from appliance.worker.storage import OutputStorage

#: Number of progress steps a delayed echo reports.
PROGRESS_STEPS = 10


class EchoConnector(Connector):
    name = "echo"

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        super().__init__(options=options, storage=storage)
        self._tasks = Attempts()

    async def capabilities(self) -> ConnectorCapabilities:
        return ConnectorCapabilities(services=["echo"])

    async def health(self) -> bool:
        return True

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        return await self._tasks.run(job, self._run(job, progress))

    async def _run(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        payload = job.payload
        delay = payload.get("delay", 0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise PermanentError(
                f"payload.delay must be a non-negative number, got {delay!r}", code="bad_payload"
            )
        if delay:
            await progress(0.0, "started")
            for step in range(1, PROGRESS_STEPS + 1):
                await asyncio.sleep(delay / PROGRESS_STEPS)
                await progress(100.0 * step / PROGRESS_STEPS, f"step {step}/{PROGRESS_STEPS}")
        fail = payload.get("fail")
        if fail is not None:  # the message is made only for a job that asks to fail (not per echo)
            message = str(payload.get("message") or f"echo asked to fail ({fail})")
            if fail == "retryable":
                raise RetryableError(message, code="echo_retryable")
            if fail == "permanent":
                raise PermanentError(message, code="echo_permanent")
            raise PermanentError(
                f"payload.fail must be 'retryable' or 'permanent', got {fail!r}", code="bad_payload"
            )
        outputs = []
        spec = payload.get("output")
        if isinstance(spec, dict):
            text = str(spec.get("text", ""))
            outputs.append(
                await self.storage.put(
                    job.id, str(spec.get("name") or "echo.txt"), text.encode(), "text/plain", kind="text"
                )
            )
        data = {"echo": payload, "attempt": job.attempt}
        if job.parents:  # what its parents returned (a job submitted with `after`)
            data["parents"] = dict(job.parents)
        return ConnectorResult(data=data, outputs=outputs)

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        self._tasks.cancel(job_id, token)
