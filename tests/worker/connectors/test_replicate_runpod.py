"""Replicate and RunPod connectors against their stand-ins on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from appliance.standins import replicate as replicate_standin
from appliance.standins import runpod as runpod_standin
from appliance.standins.jobsim import SIM_KEY
from appliance.worker.connectors import ConnectorOptions, create_connector
from appliance.worker.connectors.base import (
    Connector,
    ConnectorJob,
    JobCancelled,
    PermanentError,
    RetryableError,
)
from appliance.worker.connectors.replicate import progress_from_logs
from appliance.worker.storage import LocalStorage
from tests.worker.connectors.conftest import wait_until

KEY = "r8_secret_token"
FAST = {"poll_initial_s": 0.02, "poll_max_s": 0.05}


async def _serve(app: Any) -> tuple[TestServer, str]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


@pytest.fixture(params=["replicate", "runpod"])
async def service(
    request: pytest.FixtureRequest, storage: LocalStorage
) -> AsyncIterator[tuple[str, Connector, Any]]:
    module = replicate_standin if request.param == "replicate" else runpod_standin
    app = module.make_app(api_key=KEY)
    server, url = await _serve(app)
    connector = create_connector(
        request.param,
        options=ConnectorOptions(
            base_url=url, api_key=KEY, default_timeout_s=30, extra={**FAST, "endpoint_id": "ep1"}
        ),
        storage=storage,
    )
    await connector.start()
    yield request.param, connector, app[SIM_KEY]
    await connector.close()
    await server.close()


def job(name: str, job_input: dict[str, Any], job_id: str = "j1") -> ConnectorJob:
    payload: dict[str, Any] = {"input": job_input}
    if name == "replicate":
        payload["model"] = "owner/model"
    return ConnectorJob(id=job_id, service=name, payload=payload, attempt=1, timeout_s=None)


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    async def __call__(self, percent: float, message: str | None) -> None:
        self.calls.append((percent, message))


async def test_queued_processing_succeeded(service) -> None:
    name, connector, sim = service
    progress = Progress()
    result = await connector.process(job(name, {"prompt": "hi", "steps": 4}), progress)
    assert result.data["output"] == {"echo": {"prompt": "hi"}}
    assert result.service_job_id in sim.jobs and sim.stats["polls"] >= 1
    if name == "replicate":
        assert any(0 < p < 100 for p, _ in progress.calls)  # from the tqdm logs
    assert await connector.health() is True


async def test_failed_is_permanent(service) -> None:
    name, connector, _ = service
    with pytest.raises(PermanentError) as info:
        await connector.process(job(name, {"fail": "CUDA kernel exploded"}), Progress())
    assert "CUDA kernel exploded" in info.value.message


async def test_cancel_cancels_remote_job(service) -> None:
    name, connector, sim = service
    task = asyncio.create_task(connector.process(job(name, {"hang": True}, job_id="c1"), Progress()))
    await wait_until(lambda: bool(sim.jobs))
    await connector.cancel("c1")
    with pytest.raises(JobCancelled):
        await task
    assert sim.stats["cancels"] == 1
    assert next(iter(sim.jobs.values())).state == "canceled"


async def test_cancel_stops_only_the_named_attempt(service) -> None:
    # A lost attempt 1 still winding down on this worker, attempt 2 of the same job running: cancelling
    # attempt 1 (by its token) cancels its remote job only.
    name, connector, sim = service
    one, two = (
        ConnectorJob(
            id="c2",
            service=name,
            payload=job(name, {"hang": True}).payload,
            attempt=n,
            timeout_s=None,
            token=t,
        )
        for n, t in ((1, "t1"), (2, "t2"))
    )
    run1 = asyncio.create_task(connector.process(one, Progress()))
    await wait_until(lambda: len(sim.jobs) == 1)
    run2 = asyncio.create_task(connector.process(two, Progress()))
    await wait_until(lambda: len(sim.jobs) == 2)
    first, second = sim.jobs.values()
    await connector.cancel("c2", "t1")
    with pytest.raises(JobCancelled):
        await run1
    assert first.state == "canceled" and second.state != "canceled" and not run2.done()
    await connector.cancel("c2", "t2")
    with pytest.raises(JobCancelled):
        await run2
    assert sim.stats["cancels"] == 2


async def test_rate_limit_server_error_malformed(service) -> None:
    name, connector, _ = service
    with pytest.raises(RetryableError) as info:
        await connector.process(job(name, {"standin": "429"}), Progress())
    assert info.value.code == "rate_limited" and info.value.retry_after_s == 3.0
    with pytest.raises(RetryableError) as err:
        await connector.process(job(name, {"standin": "500"}), Progress())
    assert err.value.details["status"] == 500
    with pytest.raises(RetryableError) as bad:
        await connector.process(job(name, {"standin": "malformed"}), Progress())
    assert bad.value.code == "bad_response"


async def test_wrong_key_is_permanent_and_not_leaked(service, storage: LocalStorage) -> None:
    name, connector, _ = service
    other = create_connector(
        name,
        options=ConnectorOptions(
            base_url=connector.api.base_url, api_key="wrong-key", extra={**FAST, "endpoint_id": "ep1"}
        ),
        storage=storage,
    )
    await other.start()
    with pytest.raises(PermanentError) as info:
        await other.process(job(name, {"x": 1}), Progress())
    await other.close()
    assert info.value.code == "unauthorized"
    assert "wrong-key" not in str(info.value) + repr(info.value.details)


async def test_runpod_stream_and_timeout(storage: LocalStorage) -> None:
    app = runpod_standin.make_app(api_key=KEY)
    server, url = await _serve(app)
    connector = create_connector(
        "runpod",
        options=ConnectorOptions(
            base_url=url, api_key=KEY, extra={**FAST, "endpoint_id": "ep1", "stream": True}
        ),
        storage=storage,
    )
    await connector.start()
    progress = Progress()
    result = await connector.process(job("runpod", {"steps": 3}), progress)
    assert [c["step"] for c in result.data["stream"]] == [1, 2, 3]
    assert [p for p, _ in progress.calls] == [33.0, 66.0, 99.0]
    timed = ConnectorJob(
        id="t",
        service="runpod",
        payload={"input": {"hang": True}, "policy": {"executionTimeout": 100}},
        attempt=1,
        timeout_s=None,
    )
    with pytest.raises(RetryableError) as info:
        await connector.process(timed, Progress())
    assert info.value.code == "timeout"
    await connector.close()
    await server.close()


def test_progress_from_logs() -> None:
    assert progress_from_logs(" 10%|#  | 1/10\n 45%|####5 | 45/100") == 45.0
    assert progress_from_logs("loading weights") is None


async def test_payload_without_target_is_permanent(service) -> None:
    name, connector, sim = service
    bad = ConnectorJob(
        id="b", service=name, payload={"input": {}, "endpoint_id": ""}, attempt=1, timeout_s=None
    )
    if name == "runpod":
        connector.endpoint_id = None
    with pytest.raises(PermanentError, match="version|endpoint_id"):
        await connector.process(bad, Progress())
    assert sim.stats["created"] == 0


async def test_a_new_remote_job_provider_is_only_its_hooks(storage: LocalStorage) -> None:
    # The polling base carries submit, backoff, timeout and remote cancel: a provider is paths, statuses and a
    # result mapping (here one speaking RunPod's protocol under another name).
    from appliance.worker.connectors.polling import PollingConnector, RemoteJob

    class Tiny(PollingConnector):
        name = "tiny"
        service = "Tiny"
        default_base_url = "http://unused.invalid"
        terminal = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

        async def capabilities(self) -> Any:
            raise NotImplementedError

        async def health(self) -> bool:
            return True

        def prepare(self, job: ConnectorJob) -> RemoteJob:
            return RemoteJob(job, "/v2/ep/run", {"input": job.payload["input"]})

        def status_path(self, remote: RemoteJob) -> str:
            return f"/v2/ep/status/{remote.id}"

        def cancel_path(self, remote: RemoteJob) -> str:
            return f"/v2/ep/cancel/{remote.id}"

        async def result(self, remote: RemoteJob, cancelled: bool) -> Any:
            if cancelled:
                raise JobCancelled("tiny cancelled")
            return remote.state["output"]

    app = runpod_standin.make_app(api_key=KEY)
    server, url = await _serve(app)
    tiny = Tiny(options=ConnectorOptions(base_url=url, api_key=KEY, extra=FAST), storage=storage)
    await tiny.start()
    try:
        assert tiny.options.poll_max_s == FAST["poll_max_s"]
        assert await tiny.process(job("runpod", {"prompt": "hi"}), Progress()) == {"echo": {"prompt": "hi"}}
        hung = asyncio.create_task(tiny.process(job("runpod", {"hang": True}, job_id="h"), Progress()))
        await wait_until(lambda: len(app[SIM_KEY].jobs) == 2)
        await tiny.cancel("h")
        with pytest.raises(JobCancelled):
            await hung
        assert app[SIM_KEY].stats["cancels"] == 1
    finally:
        await tiny.close()
        await server.close()
