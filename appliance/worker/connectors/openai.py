"""OpenAI connector (official `openai` SDK, any OpenAI-compatible base URL).

Services: openai_text / openai_chat (chat.completions, streamed, progress per chunk), openai_responses
(responses API), openai_image (images.generate; images go to storage, never into the job result).
Payload: {"model": ..., "messages": [...]} | {"model", "prompt"} (text) | {"model", "input"} (responses) |
{"model", "prompt", "size", "n"} (image); `params` (dict) is passed through to the SDK call.

Streaming progress: with max_tokens (or max_completion_tokens) set, percent = chunks/max_tokens; otherwise
it approaches 99 asymptotically (100 * n / (n + 20)), since the length is unknown until the end.

Errors: the SDK retries nothing (max_retries=0): the queue retries. 429, 5xx (and 408/409), timeouts and
connection failures -> RetryableError (retry_after_s from `retry-after`/`retry-after-ms`); 400/401/403/404/422
-> PermanentError; a malformed body (not JSON, missing fields, stream cut short) -> RetryableError, because a
proxy or overloaded server produces those transiently and a well-formed request deserves another try.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, ClassVar

from pydantic import Field

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorError,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    PermanentError,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.tasks import Attempts
from appliance.worker.storage import OutputStorage

SERVICES = ["openai_text", "openai_chat", "openai_responses", "openai_image"]
RETRYABLE_STATUS = {408, 409, 429}


def map_error(exc: Exception) -> ConnectorError:
    """One SDK exception -> Retryable/PermanentError; never carries request headers (the API key)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return RetryableError("OpenAI request timed out", code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"OpenAI unreachable: {exc.__class__.__name__}", code="unreachable")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        details: dict[str, Any] = {"status": status, "request_id": exc.request_id}
        if isinstance(exc.body, dict):
            details["error"] = {k: exc.body.get(k) for k in ("message", "type", "code", "param")}
        message = f"OpenAI answered {status}: {details.get('error', {}).get('message') or exc.message}"
        retry_after = _retry_after(exc.response.headers)
        if retry_after is not None:
            details["retry_after_s"] = retry_after
        if status in RETRYABLE_STATUS or status >= 500:
            return RetryableError(
                message, code="rate_limited" if status == 429 else "service_error", details=details
            )
        return PermanentError(
            message,
            code={401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, "bad_request"),
            details=details,
        )
    if isinstance(exc, openai.APIResponseValidationError | ValueError | KeyError | TypeError):
        return RetryableError(
            f"OpenAI sent a malformed response: {exc.__class__.__name__}", code="bad_response"
        )
    return RetryableError(f"OpenAI call failed: {exc.__class__.__name__}", code="error")


def _retry_after(headers: Any) -> float | None:
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        return None  # an HTTP date: let the queue's own backoff decide
    return None


class OpenAIOptions(ConnectorOptions):
    #: Limit of one SDK read (default: the job's default timeout).
    request_timeout_s: float | None = Field(default=None, gt=0)
    #: Models to announce in the capabilities (none: any model).
    models: list[str] | None = None
    #: Model of jobs whose payload names none.
    default_model: str | None = None


class OpenAIConnector(Connector):
    name = "openai"
    Options: ClassVar[type[ConnectorOptions]] = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        super().__init__(options=options, storage=storage)
        self.request_timeout_s = self.options.request_timeout_s or self.options.default_timeout_s
        self._client: Any = None
        self._tasks = Attempts()

    async def start(self) -> None:
        from openai import AsyncOpenAI  # optional dependency, imported only here

        self._client = AsyncOpenAI(
            api_key=self.options.api_key or "unset",
            base_url=self.options.base_url,
            max_retries=0,
            timeout=self.request_timeout_s,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def capabilities(self) -> ConnectorCapabilities:
        models = self.options.models
        return ConnectorCapabilities(
            services=list(SERVICES), models={s: list(models) for s in SERVICES} if models else {}
        )

    async def health(self) -> bool:
        try:
            await self._client.models.list(timeout=min(10.0, self.request_timeout_s))
        except Exception:  # any failure means "not healthy"; details are for process()
            return False
        return True

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        self._tasks.cancel(job_id, token)

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        if self._client is None:
            raise RuntimeError("OpenAIConnector.start() was not called")
        kind = job.payload.get("kind", job.service)
        handler = {
            "openai_text": self._chat,
            "openai_chat": self._chat,
            "openai": self._chat,
            "openai_responses": self._responses,
            "openai_image": self._image,
        }.get(kind)
        if handler is None:
            raise PermanentError(
                f"unknown OpenAI job kind {kind!r} (known: {', '.join(SERVICES)})", code="bad_payload"
            )
        model = job.payload.get("model") or self.options.default_model
        if not model:
            raise PermanentError("payload.model is required", code="bad_payload")
        params = job.payload.get("params") or {}
        if not isinstance(params, dict):
            raise PermanentError("payload.params must be an object", code="bad_payload")
        timeout = job.timeout_s or self.options.default_timeout_s
        try:
            async with asyncio.timeout(timeout):  # the SDK timeout is per read; this bounds the whole job
                return await self._tasks.run(job, handler(job, str(model), params, progress, timeout))
        except TimeoutError:
            raise RetryableError(f"OpenAI job exceeded its timeout of {timeout:g}s", code="timeout") from None
        except ConnectorError:
            raise
        except Exception as exc:
            raise map_error(exc) from None

    async def _chat(
        self,
        job: ConnectorJob,
        model: str,
        params: dict[str, Any],
        progress: ProgressCallback,
        timeout_s: float,
    ) -> ConnectorResult:
        messages = job.payload.get("messages")
        if messages is None and job.payload.get("prompt") is not None:
            messages = [{"role": "user", "content": str(job.payload["prompt"])}]
        if not isinstance(messages, list) or not messages:
            raise PermanentError("payload.messages (list) or payload.prompt is required", code="bad_payload")
        if not job.payload.get("stream", True):
            completion = await self._client.chat.completions.create(
                model=model, messages=messages, timeout=timeout_s, **params
            )
            choice = completion.choices[0]
            return ConnectorResult(
                data={
                    "text": choice.message.content,
                    "finish_reason": choice.finish_reason,
                    "model": completion.model,
                    "usage": _dump(completion.usage),
                },
                service_job_id=completion.id,
            )
        limit = params.get("max_tokens") or params.get("max_completion_tokens")
        parts: list[str] = []
        finish, response_id, chunks = None, None, 0
        stream = await self._client.chat.completions.create(
            model=model, messages=messages, stream=True, timeout=timeout_s, **params
        )
        async for chunk in stream:
            response_id = chunk.id
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    parts.append(choice.delta.content)
                finish = choice.finish_reason or finish
            chunks += 1
            percent = 100.0 * chunks / limit if limit else 100.0 * chunks / (chunks + 20)
            await progress(min(99.0, percent), None)
        if finish is None:
            raise RetryableError("OpenAI stream ended before a finish_reason", code="bad_response")
        await progress(100.0, "done")
        return ConnectorResult(
            data={"text": "".join(parts), "finish_reason": finish, "model": model}, service_job_id=response_id
        )

    async def _responses(
        self,
        job: ConnectorJob,
        model: str,
        params: dict[str, Any],
        progress: ProgressCallback,
        timeout_s: float,
    ) -> ConnectorResult:
        if job.payload.get("input") is None:
            raise PermanentError("payload.input is required for openai_responses", code="bad_payload")
        response = await self._client.responses.create(
            model=model, input=job.payload["input"], timeout=timeout_s, **params
        )
        await progress(100.0, "done")
        return ConnectorResult(
            data={
                "text": response.output_text,
                "status": response.status,
                "model": model,
                "usage": _dump(response.usage),
            },
            service_job_id=response.id,
        )

    async def _image(
        self,
        job: ConnectorJob,
        model: str,
        params: dict[str, Any],
        progress: ProgressCallback,
        timeout_s: float,
    ) -> ConnectorResult:
        prompt = job.payload.get("prompt")
        if not prompt:
            raise PermanentError("payload.prompt is required for openai_image", code="bad_payload")
        extra = {k: job.payload[k] for k in ("size", "n", "quality") if k in job.payload}
        result = await self._client.images.generate(
            model=model, prompt=str(prompt), timeout=timeout_s, **extra, **params
        )
        outputs, urls = [], []
        for index, image in enumerate(result.data or []):
            if image.b64_json:
                try:
                    data = base64.b64decode(image.b64_json, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise RetryableError("OpenAI image was not valid base64", code="bad_response") from exc
                outputs.append(
                    await self.storage.put(job.id, f"image-{index}.png", data, "image/png", kind="images")
                )
            elif image.url:
                urls.append(image.url)
        if not outputs and not urls:
            raise RetryableError("OpenAI returned no images", code="bad_response")
        await progress(100.0, "done")
        return ConnectorResult(data={"model": model, "urls": urls}, outputs=outputs)


def _dump(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value
