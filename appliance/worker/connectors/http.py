"""A small JSON-over-HTTP client for polling-style APIs (Replicate, RunPod), with one error mapping.

429/5xx/408/connection errors/timeouts -> RetryableError (retry_after_s from `retry-after`), other 4xx ->
PermanentError, non-JSON bodies -> RetryableError. Messages name method, path and status only: never the
Authorization header, never the base URL's query string.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from appliance.worker.connectors.base import ConnectorError, PermanentError, RetryableError


class JsonApi:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        service: str,
        timeout_s: float = 30.0,
        auth_scheme: str = "Bearer",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.service = service
        self._headers = {"Authorization": f"{auth_scheme} {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError(f"{self.service} client not started")
        what = f"{self.service} {method} {path}"
        try:
            async with self._session.request(
                method, self.base_url + path, json=body, headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("retry-after")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RetryableError(
                f"{what}: unreachable ({exc.__class__.__name__})", code="unreachable"
            ) from None
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        details: dict[str, Any] = {"status": status}
        if isinstance(parsed, dict) and status >= 400:
            details["error"] = {k: parsed[k] for k in ("detail", "title", "error", "message") if k in parsed}
        if retry_after:
            try:
                details["retry_after_s"] = float(retry_after)
            except ValueError:
                pass
        if status == 429 or status == 408 or status >= 500:
            code = "rate_limited" if status == 429 else "service_error"
            raise RetryableError(f"{what} answered {status}", code=code, details=details)
        if status >= 400:
            code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, "bad_request")
            raise PermanentError(
                f"{what} answered {status}: {details.get('error') or ''}".rstrip(": "),
                code=code,
                details=details,
            )
        if not isinstance(parsed, dict):
            raise RetryableError(f"{what} sent a malformed body", code="bad_response", details=details)
        return parsed

    async def answers(self, method: str, path: str) -> bool:
        """Whether a request succeeds: a health probe, or a best-effort call (cancel) whose failure changes nothing."""
        try:
            await self.request(method, path)
        except ConnectorError:
            return False
        return True
