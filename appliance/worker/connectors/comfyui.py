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
request_timeout_s (30), node_id ("comfyui").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import mimetypes
import time
import uuid
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
from appliance.worker.connectors.comfyui_events import (
    ProgressTracker,
    execution_failure,
    explain_validation,
    output_refs,
    status_message,
)
from appliance.worker.connectors.tasks import AttemptKey, attempts_of
from appliance.worker.storage import OutputStorage

log = logging.getLogger(__name__)

#: Namespace for prompt ids: uuid5(PROMPT_NAMESPACE, job_id) is stable across attempts and workers.
PROMPT_NAMESPACE = uuid.UUID("6d1f3a52-7c1e-4f0b-9a57-1b0c8f2d7e11")
#: Loader nodes whose combo lists name the models this instance has.
MODEL_INPUTS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "LoraLoader": ("lora_name", "loras"),
    "VAELoader": ("vae_name", "vae"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "ControlNetLoader": ("control_net_name", "controlnet"),
    "UpscaleModelLoader": ("model_name", "upscale_models"),
}


def prompt_id_for(job_id: str) -> str:
    return str(uuid.uuid5(PROMPT_NAMESPACE, job_id))


class ComfyUIConnector(Connector):
    name = "comfyui"

    def __init__(self, *, options: Any, storage: OutputStorage) -> None:
        self.base_url = (options.base_url or "http://127.0.0.1:8188").rstrip("/")
        self.default_timeout_s = float(options.default_timeout_s)
        self.max_concurrency = 1  # one ComfyUI runs one prompt at a time
        extra = dict(options.extra or {})
        self.poll_interval_s = float(extra.get("poll_interval_s", 5.0))
        self.fast_poll_interval_s = float(extra.get("fast_poll_interval_s", 0.5))
        self.unreachable_grace_s = float(extra.get("unreachable_grace_s", 30.0))
        self.cancel_grace_s = float(extra.get("cancel_grace_s", 10.0))
        self.request_timeout_s = float(extra.get("request_timeout_s", 30.0))
        self.storage = storage
        self._session: aiohttp.ClientSession | None = None
        # Per attempt (job id, token): stopping a lost attempt never touches a newer one of the same job.
        self._active: dict[AttemptKey, str] = {}  # attempt -> prompt id
        self._cancelled: dict[AttemptKey, asyncio.Event] = {}
        self._wakes: dict[AttemptKey, asyncio.Event] = {}  # attempt -> "re-check history now"

    # ---- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ComfyUIConnector.start() was not called")
        return self._session

    async def _request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON or bytes; always bytes with `raw`); connection problems and 5xx become
        RetryableError."""
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 500:
                    raise RetryableError(
                        f"ComfyUI {method} {path} answered {resp.status}",
                        code="service_error",
                        details={"status": resp.status},
                    )
                if not raw and resp.content_type == "application/json":
                    return resp.status, json.loads(body or b"null")
                return resp.status, body
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RetryableError(
                f"ComfyUI at {self.base_url} unreachable: {exc.__class__.__name__}: {exc}", code="unreachable"
            ) from exc
        except json.JSONDecodeError as exc:
            raise RetryableError(f"ComfyUI {method} {path} sent malformed JSON", code="bad_response") from exc

    # ---- probes -----------------------------------------------------------------------------------------
    async def health(self) -> bool:
        try:
            status, body = await self._request("GET", "/system_stats")
        except RetryableError:
            return False
        return status == 200 and isinstance(body, dict) and "system" in body

    async def capabilities(self) -> ConnectorCapabilities:
        _, stats = await self._request("GET", "/system_stats")
        _, info = await self._request("GET", "/object_info")
        folders: dict[str, list[str]] = {}
        for node, (field_name, folder) in MODEL_INPUTS.items():
            spec = ((info or {}).get(node) or {}).get("input", {}).get("required", {}).get(field_name)
            choices = _combo_choices(spec)
            if choices is not None:
                folders[folder] = choices
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
        for key in attempts_of(list(self._active), job_id, token):
            await self._cancel_attempt(key)

    async def _cancel_attempt(self, key: AttemptKey) -> None:
        prompt_id = self._active.get(key)
        event = self._cancelled.get(key)
        if prompt_id is None or event is None or event.is_set():
            return
        event.set()
        with contextlib.suppress(RetryableError):
            await self._request("POST", "/queue", json={"delete": [prompt_id]})
            await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        wake = self._wakes.get(key)
        if wake is not None:
            wake.set()

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        workflow, images = _parse_payload(job.payload)
        prompt_id = prompt_id_for(job.id)
        key = (job.id, job.token)
        self._active[key] = prompt_id
        cancelled = self._cancelled[key] = asyncio.Event()
        timeout = job.timeout_s or self.default_timeout_s
        try:
            async with asyncio.timeout(timeout):
                entry = await self._run(job, prompt_id, workflow, images, progress, cancelled)
        except TimeoutError:
            with contextlib.suppress(RetryableError):
                await self._request("POST", "/queue", json={"delete": [prompt_id]})
                await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
            raise RetryableError(
                f"ComfyUI prompt {prompt_id} exceeded the job timeout of {timeout:g}s",
                code="timeout",
                details={"prompt_id": prompt_id},
            ) from None
        finally:
            self._active.pop(key, None)
            self._cancelled.pop(key, None)
            self._wakes.pop(key, None)
        outputs, ui = await self._collect(job.id, entry)
        await progress(100.0, "done")
        data: dict[str, Any] = {"prompt_id": prompt_id}
        if ui:
            data["ui"] = ui
        return ConnectorResult(data=data, outputs=outputs, service_job_id=prompt_id)

    async def _run(
        self,
        job: ConnectorJob,
        prompt_id: str,
        workflow: dict[str, Any],
        images: list[Any],
        progress: ProgressCallback,
        cancelled: asyncio.Event,
    ) -> dict[str, Any]:
        entry = await self._history(prompt_id)
        if entry is not None and _finished(entry):
            if (entry.get("status") or {}).get("status_str") == "success":
                log.info("job %s: prompt %s already finished, collecting", job.id, prompt_id)
                return entry
            await self._request("POST", "/history", json={"delete": [prompt_id]})  # failed before: run again
            entry = None
        client_id = uuid.uuid5(PROMPT_NAMESPACE, "client:" + prompt_id).hex
        tracker = ProgressTracker(prompt_id, set(workflow))
        wake = self._wakes[(job.id, job.token)] = asyncio.Event()
        ws_state = {"connected": False}
        ws_task = asyncio.create_task(self._watch(client_id, tracker, progress, wake, ws_state))
        try:
            if entry is None and not await self._in_queue(prompt_id):
                await self._upload_images(images)
                await self._submit(prompt_id, client_id, workflow)
            return await self._wait(prompt_id, wake, ws_state, cancelled)
        finally:
            ws_task.cancel()
            await asyncio.gather(ws_task, return_exceptions=True)

    async def _submit(self, prompt_id: str, client_id: str, workflow: dict[str, Any]) -> None:
        status, body = await self._request(
            "POST", "/prompt", json={"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        )
        if status == 400 and isinstance(body, dict):
            raise explain_validation(body)
        if status != 200:
            raise PermanentError(
                f"ComfyUI POST /prompt answered {status}", code="rejected", details={"status": status}
            )
        if isinstance(body, dict) and body.get("node_errors"):
            # ComfyUI queued the prompt but will skip the invalid outputs; a job that silently loses
            # outputs is worse than a clear failure, so take it back out and fail.
            with contextlib.suppress(RetryableError):
                await self._request("POST", "/queue", json={"delete": [prompt_id]})
                await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
            raise explain_validation(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "some outputs failed validation",
                    },
                    "node_errors": body["node_errors"],
                }
            )
        if isinstance(body, dict) and body.get("prompt_id") not in (None, prompt_id):
            # Older ComfyUI ignores a caller-chosen prompt_id; without it we cannot be idempotent.
            raise PermanentError(
                "this ComfyUI does not honour prompt_id in POST /prompt; upgrade it",
                code="unsupported_comfyui",
            )

    async def _wait(
        self, prompt_id: str, wake: asyncio.Event, ws_state: dict[str, bool], cancelled: asyncio.Event
    ) -> dict[str, Any]:
        missing = 0
        down_since: float | None = None
        cancel_deadline: float | None = None
        while True:
            try:
                entry = await self._history(prompt_id)
                queued = entry is None and await self._in_queue(prompt_id)
                down_since = None
            except RetryableError:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.unreachable_grace_s:
                    raise
                entry, queued = None, True
            if cancelled.is_set():
                cancel_deadline = cancel_deadline or time.monotonic() + self.cancel_grace_s
                if (
                    (entry is not None and _finished(entry))
                    or (entry is None and not queued)
                    or time.monotonic() > cancel_deadline
                ):
                    raise JobCancelled(
                        f"ComfyUI prompt {prompt_id} cancelled", details={"prompt_id": prompt_id}
                    )
            elif entry is not None and _finished(entry):
                return _raise_for_failure(entry)
            missing = missing + 1 if entry is None and not queued else 0
            if missing >= 2:
                raise RetryableError(
                    f"ComfyUI lost prompt {prompt_id} (restarted?): neither queued nor in history",
                    code="prompt_lost",
                    details={"prompt_id": prompt_id},
                )
            fast = not ws_state["connected"] or missing or cancelled.is_set() or down_since
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    wake.wait(), self.fast_poll_interval_s if fast else self.poll_interval_s
                )
            wake.clear()

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
                async with self.session.ws_connect(
                    url, heartbeat=30, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    state["connected"] = True
                    backoff = 0.1
                    wake.set()  # re-check history: we may have missed events while disconnected
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue  # binary frames are previews
                        event = json.loads(msg.data)
                        etype, data = event.get("type"), event.get("data") or {}
                        if tracker.handle(etype, data):
                            await progress(
                                tracker.percent, f"node {tracker.current}" if tracker.current else None
                            )
                        if etype in ("execution_success", "execution_error", "execution_interrupted") or (
                            etype == "executing" and data.get("node") is None
                        ):
                            wake.set()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("ComfyUI websocket: %s", exc.__class__.__name__)
            state["connected"] = False
            wake.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _history(self, prompt_id: str) -> dict[str, Any] | None:
        _, body = await self._request("GET", f"/history/{prompt_id}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def _in_queue(self, prompt_id: str) -> bool:
        _, body = await self._request("GET", "/queue")
        items = (body or {}).get("queue_running", []) + (body or {}).get("queue_pending", [])
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    async def _upload_images(self, images: list[Any]) -> None:
        for index, image in enumerate(images):
            if not isinstance(image, dict) or not image.get("name") or not image.get("image"):
                raise PermanentError(
                    f"payload.images[{index}] needs 'name' and 'image' (base64 or URL)", code="bad_payload"
                )
            data = await self._image_bytes(str(image["image"]), index)
            form = aiohttp.FormData()
            form.add_field(
                "image",
                data,
                filename=str(image["name"]),
                content_type=mimetypes.guess_type(str(image["name"]))[0] or "application/octet-stream",
            )
            form.add_field("overwrite", "true")
            status, _ = await self._request("POST", "/upload/image", data=form)
            if status != 200:
                raise PermanentError(
                    f"ComfyUI refused upload of {image['name']!r} ({status})", code="upload_failed"
                )

    async def _image_bytes(self, value: str, index: int) -> bytes:
        if value.startswith(("http://", "https://")):
            try:
                async with self.session.get(value) as resp:
                    if resp.status != 200:
                        raise PermanentError(
                            f"payload.images[{index}]: GET {value} answered {resp.status}", code="bad_payload"
                        )
                    return await resp.read()
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise RetryableError(
                    f"payload.images[{index}]: cannot fetch {value}", code="input_fetch"
                ) from exc
        if value.startswith("data:"):
            value = value.split(",", 1)[-1]
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PermanentError(
                f"payload.images[{index}].image is neither a URL nor valid base64", code="bad_payload"
            ) from exc

    async def _collect(self, job_id: str, entry: dict[str, Any]) -> tuple[list[OutputFile], dict[str, Any]]:
        refs, ui = output_refs(entry)
        stored: list[OutputFile] = []
        for ref in refs:
            # Raw bytes whatever the Content-Type: /view serves a .json output as application/json, and the
            # file must be stored as it is, not parsed.
            status, body = await self._request(
                "GET",
                "/view",
                raw=True,
                params={"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type},
            )
            if status != 200 or not isinstance(body, bytes):
                raise RetryableError(f"ComfyUI /view {ref.filename} answered {status}", code="output_missing")
            name = f"{ref.subfolder}_{ref.filename}" if ref.subfolder else ref.filename
            ctype = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
            stored.append(await self.storage.put(job_id, name, body, ctype, kind=ref.kind, node=ref.node))
        return stored, ui


def _combo_choices(spec: Any) -> list[str] | None:
    """Choices of a combo input: old form [[a, b], {...}], new form ["COMBO", {"options": [a, b]}]."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(x) for x in spec[1].get("options", [])]
    return None


def _finished(entry: dict[str, Any]) -> bool:
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def _raise_for_failure(entry: dict[str, Any]) -> dict[str, Any]:
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return entry
    error = status_message(entry, "execution_error")
    if error is not None:
        raise execution_failure(error)
    interrupted = status_message(entry, "execution_interrupted")
    if interrupted is not None:
        # Not requested by us (cancel() is handled before): someone else interrupted ComfyUI; try again.
        raise RetryableError(
            f"ComfyUI prompt interrupted at node {interrupted.get('node_id')}",
            code="interrupted",
            details=interrupted,
        )
    raise RetryableError("ComfyUI reported an error without details", code="execution_error")


def _parse_payload(payload: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    workflow = payload.get("workflow", payload.get("prompt"))
    if not isinstance(workflow, dict) or not workflow:
        raise PermanentError(
            "payload needs 'workflow' (or 'prompt'): a non-empty ComfyUI API-format graph", code="bad_payload"
        )
    images = payload.get("images") or []
    if not isinstance(images, list):
        raise PermanentError("payload.images must be a list of {name, image}", code="bad_payload")
    return workflow, images
