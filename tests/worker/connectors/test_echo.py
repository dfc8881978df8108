"""Echo connector: payload round trip, progress, failures, cancel, factory errors."""

from __future__ import annotations

import asyncio

import pytest

from appliance.worker.connectors import ConnectorOptions, create_connector
from appliance.worker.connectors.base import ConnectorJob, JobCancelled, PermanentError, RetryableError
from appliance.worker.storage import LocalStorage
from tests.worker.connectors.conftest import read_bytes


def job(payload: dict, job_id: str = "e1") -> ConnectorJob:
    return ConnectorJob(id=job_id, service="echo", payload=payload, attempt=2, timeout_s=None)


@pytest.fixture
def echo(storage: LocalStorage):
    return create_connector("echo", options=ConnectorOptions(concurrency=3), storage=storage)


async def test_echo_returns_payload_with_progress_and_output(echo) -> None:
    seen: list[float] = []

    async def progress(percent: float, message: str | None) -> None:
        seen.append(percent)

    result = await echo.process(
        job({"delay": 0.01, "x": [1, 2], "output": {"name": "a.txt", "text": "hi"}}), progress
    )
    assert result.data["echo"]["x"] == [1, 2] and result.data["attempt"] == 2
    assert seen == [10.0 * i for i in range(0, 11)]
    assert read_bytes(result.outputs[0].path).decode() == "hi"
    assert result.to_dict()["outputs"][0]["name"] == "e1/a.txt"
    assert echo.max_concurrency == 3 and (await echo.capabilities()).services == ["echo"]


async def test_echo_fail_modes(echo) -> None:
    async def progress(percent: float, message: str | None) -> None:
        return None

    with pytest.raises(RetryableError, match="try later"):
        await echo.process(job({"fail": "retryable", "message": "try later"}), progress)
    with pytest.raises(PermanentError) as info:
        await echo.process(job({"fail": "permanent"}), progress)
    assert not info.value.retryable and info.value.code == "echo_permanent"
    with pytest.raises(PermanentError, match="delay"):
        await echo.process(job({"delay": "soon"}), progress)


async def test_echo_cancel_is_prompt(echo) -> None:
    started = asyncio.Event()

    async def progress(percent: float, message: str | None) -> None:
        started.set()

    task = asyncio.create_task(echo.process(job({"delay": 3600}, "long"), progress))
    await started.wait()
    await echo.cancel("long")
    await echo.cancel("long")
    with pytest.raises(JobCancelled):
        await task
    await echo.cancel("unknown-job")  # no-op


def test_unknown_connector_is_named(storage: LocalStorage) -> None:
    with pytest.raises(ValueError, match="unknown connector 'nope'.*comfyui"):
        create_connector("nope", options=ConnectorOptions(), storage=storage)


def test_api_key_not_in_repr() -> None:
    assert "sk-secret" not in repr(ConnectorOptions(api_key="sk-secret"))
