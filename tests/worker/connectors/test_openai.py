"""OpenAI connector (real SDK) against the OpenAI stand-in on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from appliance.standins.openai import make_app
from appliance.worker.connectors import ConnectorOptions, create_connector
from appliance.worker.connectors.base import (
    Connector,
    ConnectorJob,
    JobCancelled,
    PermanentError,
    RetryableError,
)
from appliance.worker.storage import LocalStorage
from tests.worker.connectors.conftest import read_bytes

KEY = "sk-test-secret-value"


@pytest.fixture
async def openai_url() -> AsyncIterator[str]:
    server = TestServer(make_app(api_key=KEY, slow_seconds=30), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
async def connector(openai_url: str, storage: LocalStorage) -> AsyncIterator[Connector]:
    c = create_connector(
        "openai",
        options=ConnectorOptions(base_url=openai_url, api_key=KEY, default_timeout_s=5, concurrency=4),
        storage=storage,
    )
    await c.start()
    yield c
    await c.close()


def job(
    service: str, payload: dict[str, Any], job_id: str = "j1", timeout_s: float | None = None
) -> ConnectorJob:
    return ConnectorJob(id=job_id, service=service, payload=payload, attempt=1, timeout_s=timeout_s)


class Progress:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.seen = asyncio.Event()

    async def __call__(self, percent: float, message: str | None) -> None:
        self.calls.append(percent)
        self.seen.set()


async def test_chat_streams_with_progress(connector: Connector) -> None:
    progress = Progress()
    result = await connector.process(
        job(
            "openai_chat",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three four"}]},
        ),
        progress,
    )
    assert result.data["text"] == "echo: one two three four"
    assert result.data["finish_reason"] == "stop"
    assert (
        len(progress.calls) >= 5 and progress.calls == sorted(progress.calls) and progress.calls[-1] == 100.0
    )


async def test_text_without_stream_and_responses(connector: Connector) -> None:
    result = await connector.process(
        job("openai_text", {"model": "gpt-4o-mini", "prompt": "hi", "stream": False}), Progress()
    )
    assert result.data["text"] == "echo: hi" and result.service_job_id.startswith("chatcmpl-")
    result = await connector.process(
        job("openai_responses", {"model": "gpt-4o-mini", "input": "yo"}), Progress()
    )
    assert result.data["text"] == "echo: yo" and result.data["status"] == "completed"


async def test_image_is_stored_not_inlined(connector: Connector, tmp_path: Path) -> None:
    result = await connector.process(
        job("openai_image", {"model": "gpt-image-1", "prompt": "a cat", "n": 2, "size": "8x8"}), Progress()
    )
    assert len(result.outputs) == 2
    assert read_bytes(result.outputs[0].path).startswith(b"\x89PNG")
    assert "b64" not in str(result.to_dict())


async def test_rate_limit_is_retryable_with_retry_after(connector: Connector) -> None:
    with pytest.raises(RetryableError) as info:
        await connector.process(job("openai_chat", {"model": "standin-429", "prompt": "x"}), Progress())
    assert info.value.code == "rate_limited" and info.value.retry_after_s == 7.0
    assert KEY not in str(info.value) + repr(info.value.details)


async def test_server_error_retryable_bad_request_permanent(connector: Connector) -> None:
    with pytest.raises(RetryableError) as info:
        await connector.process(job("openai_chat", {"model": "standin-500", "prompt": "x"}), Progress())
    assert info.value.details["status"] == 500
    with pytest.raises(PermanentError) as bad:
        await connector.process(job("openai_chat", {"model": "standin-400", "prompt": "x"}), Progress())
    assert bad.value.details["error"]["code"] == "model_not_found"


async def test_wrong_key_is_permanent(openai_url: str, storage: LocalStorage) -> None:
    c = create_connector(
        "openai", options=ConnectorOptions(base_url=openai_url, api_key="sk-wrong"), storage=storage
    )
    await c.start()
    with pytest.raises(PermanentError) as info:
        await c.process(job("openai_chat", {"model": "gpt-4o-mini", "prompt": "x"}), Progress())
    assert info.value.code == "unauthorized" and "sk-wrong" not in str(info.value.details)
    assert await c.health() is False
    await c.close()


async def test_timeout_is_retryable(connector: Connector) -> None:
    with pytest.raises(RetryableError) as info:
        await connector.process(
            job("openai_chat", {"model": "standin-slow", "prompt": "x", "stream": False}, timeout_s=0.3),
            Progress(),
        )
    assert info.value.code == "timeout"


async def test_malformed_and_truncated_bodies_are_retryable(connector: Connector) -> None:
    with pytest.raises(RetryableError) as info:
        await connector.process(
            job("openai_chat", {"model": "standin-malformed", "prompt": "x", "stream": False}), Progress()
        )
    assert info.value.code == "bad_response"
    with pytest.raises(RetryableError):
        await connector.process(
            job("openai_chat", {"model": "standin-truncated", "prompt": "a b c d e f"}), Progress()
        )


async def test_cancel_drops_the_request(connector: Connector) -> None:
    task = asyncio.create_task(
        connector.process(
            job("openai_chat", {"model": "standin-slow", "prompt": "x"}, job_id="slow"), Progress()
        )
    )
    while True:  # wait until the job is registered, then cancel it
        await asyncio.sleep(0.01)
        if "slow" in connector._tasks:  # type: ignore[attr-defined]
            break
    await connector.cancel("slow")
    with pytest.raises(JobCancelled):
        await task


async def test_bad_payloads_are_permanent(connector: Connector) -> None:
    with pytest.raises(PermanentError, match="model"):
        await connector.process(job("openai_chat", {"prompt": "x"}), Progress())
    with pytest.raises(PermanentError, match="unknown OpenAI job kind"):
        await connector.process(job("openai_video", {"model": "m"}), Progress())
    assert await connector.health() is True
