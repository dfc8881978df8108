"""ComfyUI's HTTP API as the connector uses it: one session, one error mapping, one call per route.

Connection problems and 5xx become RetryableError; refusals of a prompt or an upload become PermanentError
with ComfyUI's own explanation.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import mimetypes
from typing import Any

import aiohttp

from appliance.worker.connectors.base import PermanentError, RetryableError
from appliance.worker.connectors.comfyui_events import explain_validation


class ComfyClient:
    """The HTTP side of one ComfyUI instance."""

    def __init__(self, base_url: str, request_timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

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

    async def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> tuple[int, Any]:
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

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        _, body = await self.request("GET", f"/history/{prompt_id}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def forget(self, prompt_id: str) -> None:
        """Delete the prompt's history entry (a failed run, about to run again)."""
        await self.request("POST", "/history", json={"delete": [prompt_id]})

    async def in_queue(self, prompt_id: str) -> bool:
        _, body = await self.request("GET", "/queue")
        items = (body or {}).get("queue_running", []) + (body or {}).get("queue_pending", [])
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    async def take_back(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the queue and interrupt it if it runs."""
        with contextlib.suppress(RetryableError):
            await self.request("POST", "/queue", json={"delete": [prompt_id]})
            await self.request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def submit(self, prompt_id: str, client_id: str, workflow: dict[str, Any]) -> None:
        status, body = await self.request(
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
            await self.take_back(prompt_id)
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

    async def upload_images(self, images: list[Any]) -> None:
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
            status, _ = await self.request("POST", "/upload/image", data=form)
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

    async def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        """One output file, raw bytes whatever the Content-Type: /view serves a .json output as
        application/json, and the file must be stored as it is, not parsed."""
        status, body = await self.request(
            "GET", "/view", raw=True, params={"filename": filename, "subfolder": subfolder, "type": kind}
        )
        if status != 200 or not isinstance(body, bytes):
            raise RetryableError(f"ComfyUI /view {filename} answered {status}", code="output_missing")
        return bytes(body)
