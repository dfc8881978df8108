"""ComfyUI connector: runs an API-format workflow on one local, stock ComfyUI instance.

Idempotence: the prompt_id is uuid5(job id), and the WS client id is derived from it too. On every
(re)claim we first look the prompt up: finished in /history -> collect its outputs (never rerun);
queued or running in /queue -> follow it; failed in history -> delete that entry and submit again;
absent -> upload inputs and POST /prompt.

Completion: /history is the source of truth (ComfyUI writes it before its final `executing node=null`).
The WS only feeds progress and wakes the history check early; when the socket drops we reconnect and
meanwhile poll /history fast, otherwise poll slowly in the background, so a zombie socket cannot stall a job.
A prompt that is neither in the queue nor in history twice in a row was lost (ComfyUI restarted): retryable.
ComfyUI unreachable for longer than `unreachable_grace_s`: retryable.

extra options: poll_interval_s (5), fast_poll_interval_s (0.5), unreachable_grace_s (30), cancel_grace_s (10),
request_timeout_s (30). HTTP calls live in comfyui_http.py, pure mapping (events, errors, outputs) in
comfyui_events.py; this module owns the attempt: submit or follow, wait, cancel, collect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
import uuid
from typing import Any, ClassVar

import aiohttp
from pydantic import Field

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    JobCancelled,
    OutputFile,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.comfyui_events import (
    ProgressTracker,
    finished,
    model_folders,
    output_refs,
    parse_payload,
    raise_for_failure,
)
from appliance.worker.connectors.comfyui_http import ComfyClient
from appliance.worker.connectors.tasks import Attempt, Attempts
from appliance.worker.storage import OutputStorage

log = logging.getLogger(__name__)

#: Namespace for prompt ids: uuid5(PROMPT_NAMESPACE, job_id) is stable across attempts and workers.
PROMPT_NAMESPACE = uuid.UUID("6d1f3a52-7c1e-4f0b-9a57-1b0c8f2d7e11")
#: WS events after which the history is worth a look at once.
ENDING_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def prompt_id_for(job_id: str) -> str:
    return str(uuid.uuid5(PROMPT_NAMESPACE, job_id))


class ComfyUIOptions(ConnectorOptions):
    poll_interval_s: float = Field(default=5.0, gt=0)
    #: While the WS is down, a cancel is pending or the prompt went missing.
    fast_poll_interval_s: float = Field(default=0.5, gt=0)
    unreachable_grace_s: float = Field(default=30.0, ge=0)
    #: How long a cancelled prompt may take to leave the queue before the attempt ends anyway.
    cancel_grace_s: float = Field(default=10.0, ge=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    #: Accepted for compatibility with older configurations; unused.
    node_id: str = "comfyui"


class ComfyUIConnector(Connector):
    name = "comfyui"
    Options: ClassVar[type[ConnectorOptions]] = ComfyUIOptions
    options: ComfyUIOptions

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        super().__init__(options=options, storage=storage)
        self.max_concurrency = 1  # one ComfyUI runs one prompt at a time
        self.client = ComfyClient(
            self.options.base_url or "http://127.0.0.1:8188", self.options.request_timeout_s
        )
        self.base_url = self.client.base_url
        self.attempts = Attempts()

    # ---- lifecycle and probes ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def health(self) -> bool:
        try:
            status, body = await self.client.request("GET", "/system_stats")
        except RetryableError:
            return False
        return status == 200 and isinstance(body, dict) and "system" in body

    async def capabilities(self) -> ConnectorCapabilities:
        _, stats = await self.client.request("GET", "/system_stats")
        _, info = await self.client.request("GET", "/object_info")
        folders = model_folders(info)
        devices = (stats or {}).get("devices") or []
        vram = max((d.get("vram_total", 0) for d in devices), default=0)
        models = sorted({m for names in folders.values() for m in names})
        return ConnectorCapabilities(
            services=["comfyui"],
            models={"comfyui": models},
            gpu_memory_gb=round(vram / 1024**3, 2) if vram else None,
            extra={
                "model_folders": folders,
                "comfyui_version": (stats or {}).get("system", {}).get("comfyui_version"),
                "devices": [d.get("name") for d in devices],
            },
        )

    # ---- jobs -------------------------------------------------------------------------------------------
    async def cancel(self, job_id: str, token: str | None = None) -> None:
        for attempt in self.attempts.cancel(job_id, token):
            await self.client.take_back(attempt.remote)
            attempt.wake.set()

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        workflow, images = parse_payload(job.payload)
        prompt_id = prompt_id_for(job.id)
        timeout = job.timeout_s or self.options.default_timeout_s
        with self.attempts.open(job, remote=prompt_id) as attempt:
            try:
                async with asyncio.timeout(timeout):
                    entry = await self._run(job, attempt, workflow, images, progress)
            except TimeoutError:
                await self.client.take_back(prompt_id)
                raise RetryableError(
                    f"ComfyUI prompt {prompt_id} exceeded the job timeout of {timeout:g}s",
                    code="timeout",
                    details={"prompt_id": prompt_id},
                ) from None
        outputs, ui = await self._collect(job.id, entry)
        await progress(100.0, "done")
        data: dict[str, Any] = {"prompt_id": prompt_id}
        if ui:
            data["ui"] = ui
        return ConnectorResult(data=data, outputs=outputs, service_job_id=prompt_id)

    async def _run(
        self,
        job: ConnectorJob,
        attempt: Attempt,
        workflow: dict[str, Any],
        images: list[Any],
        progress: ProgressCallback,
    ) -> dict[str, Any]:
        prompt_id = str(attempt.remote)
        entry = await self.client.history(prompt_id)
        if entry is not None and finished(entry):
            if (entry.get("status") or {}).get("status_str") == "success":
                log.info("job %s: prompt %s already finished, collecting", job.id, prompt_id)
                return entry
            await self.client.forget(prompt_id)  # failed before: run again
            entry = None
        client_id = uuid.uuid5(PROMPT_NAMESPACE, "client:" + prompt_id).hex
        tracker = ProgressTracker(prompt_id, set(workflow))
        ws_state = {"connected": False}
        ws_task = asyncio.create_task(self._watch(client_id, tracker, progress, attempt.wake, ws_state))
        try:
            if entry is None and not await self.client.in_queue(prompt_id):
                await self.client.upload_images(images)
                await self.client.submit(prompt_id, client_id, workflow)
            return await self._wait(prompt_id, attempt, ws_state)
        finally:
            ws_task.cancel()
            await asyncio.gather(ws_task, return_exceptions=True)

    async def _wait(self, prompt_id: str, attempt: Attempt, ws_state: dict[str, bool]) -> dict[str, Any]:
        """Until the prompt is in history (or lost, or cancelled and gone): /history decides, the WS wakes us."""
        missing = 0
        down_since: float | None = None
        cancel_deadline: float | None = None
        while True:
            try:
                entry = await self.client.history(prompt_id)
                queued = entry is None and await self.client.in_queue(prompt_id)
                down_since = None
            except RetryableError:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.options.unreachable_grace_s:
                    raise
                entry, queued = None, True
            if attempt.cancelled.is_set():
                cancel_deadline = cancel_deadline or time.monotonic() + self.options.cancel_grace_s
                if (
                    (entry is not None and finished(entry))
                    or (entry is None and not queued)
                    or time.monotonic() > cancel_deadline
                ):
                    raise JobCancelled(
                        f"ComfyUI prompt {prompt_id} cancelled", details={"prompt_id": prompt_id}
                    )
            elif entry is not None and finished(entry):
                return raise_for_failure(entry)
            missing = missing + 1 if entry is None and not queued else 0
            if missing >= 2:
                raise RetryableError(
                    f"ComfyUI lost prompt {prompt_id} (restarted?): neither queued nor in history",
                    code="prompt_lost",
                    details={"prompt_id": prompt_id},
                )
            fast = not ws_state["connected"] or missing or attempt.cancelled.is_set() or down_since
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    attempt.wake.wait(),
                    self.options.fast_poll_interval_s if fast else self.options.poll_interval_s,
                )
            attempt.wake.clear()

    async def _watch(
        self,
        client_id: str,
        tracker: ProgressTracker,
        progress: ProgressCallback,
        wake: asyncio.Event,
        state: dict[str, bool],
    ) -> None:
        """Follow /ws events, reconnecting forever (the caller cancels us); wakes the waiter on news."""
        url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        backoff = 0.1
        while True:
            try:
                async with self.client.session.ws_connect(
                    url, heartbeat=30, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    state["connected"] = True
                    backoff = 0.1
                    wake.set()  # re-check history: we may have missed events while disconnected
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:  # binary frames are previews
                            await self._on_event(json.loads(msg.data), tracker, progress, wake)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("ComfyUI websocket: %s", exc.__class__.__name__)
            state["connected"] = False
            wake.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    @staticmethod
    async def _on_event(
        event: dict[str, Any], tracker: ProgressTracker, progress: ProgressCallback, wake: asyncio.Event
    ) -> None:
        etype, data = str(event.get("type")), event.get("data") or {}
        if tracker.handle(etype, data):
            await progress(tracker.percent, f"node {tracker.current}" if tracker.current else None)
        if etype in ENDING_EVENTS or (etype == "executing" and data.get("node") is None):
            wake.set()

    async def _collect(self, job_id: str, entry: dict[str, Any]) -> tuple[list[OutputFile], dict[str, Any]]:
        refs, ui = output_refs(entry)
        stored: list[OutputFile] = []
        for ref in refs:
            body = await self.client.view(ref.filename, ref.subfolder, ref.type)
            name = f"{ref.subfolder}_{ref.filename}" if ref.subfolder else ref.filename
            ctype = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
            stored.append(await self.storage.put(job_id, name, body, ctype, kind=ref.kind, node=ref.node))
        return stored, ui
