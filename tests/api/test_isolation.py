"""Tenant isolation, adversarially: bob holds a valid key of his own and tries every way to reach alice's jobs.
Each answer is the one an unknown id gets (404), so ids leak nothing; alice's jobs stay untouched."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from appliance.api.keys import Scope
from tests.api.conftest import Server, finish


@pytest.fixture
async def alices_job(server: Server) -> tuple[str, str]:
    alice = await server.client("alice")
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"secret": 42}})
    _, failed, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    await finish(server.queue, failed["id"], "failed")
    return job["id"], failed["id"]


async def test_another_tenant_cannot_read_cancel_retry_or_stream(
    server: Server, alices_job: tuple[str, str]
) -> None:
    job_id, failed_id = alices_job
    bob = await server.client("bob", [Scope.SUBMIT, Scope.READ, Scope.CANCEL, Scope.ADMIN])
    unknown = "0123456789abcdef0123456789abcdef"
    attempts = [
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{failed_id}/retry"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/outputs/out.png"),
    ]
    for method, path in attempts:
        status, body, resp = await bob.call(method, path)
        assert status == 404, (method, path, body)
        other_status, other_body, _ = await bob.call(
            method, path.replace(job_id, unknown).replace(failed_id, unknown)
        )
        assert other_status == 404
        assert body["detail"].replace(job_id, "X").replace(failed_id, "X") == other_body["detail"].replace(
            unknown, "X"
        )
    _, page, _ = await bob.call("GET", "/v1/jobs?limit=200")
    assert page["jobs"] == []
    job = await server.queue.require(job_id)
    assert job.status.value == "pending" and not job.cancel_requested
    assert (await server.queue.require(failed_id)).status.value == "failed"


async def test_a_body_cannot_claim_another_customer(server: Server) -> None:
    bob = await server.client("bob")
    for body in (
        {"service": "echo", "customer_id": "alice"},
        {"jobs": [{"service": "echo"}, {"service": "echo", "customer_id": "alice"}]},
    ):
        path = "/v1/jobs/batch" if "jobs" in body else "/v1/jobs"
        status, problem, _ = await bob.call("POST", path, json=body)
        assert status == 400 and "customer_id" in problem["detail"]
    assert (await server.queue.stats()).totals.get("submitted", 0) == 0


async def test_the_websocket_follows_only_the_tenants_jobs(
    server: Server, alices_job: tuple[str, str]
) -> None:
    job_id, _ = alices_job
    bob = await server.client("bob")
    async with server.http.ws_connect(server.base + "/v1/ws", headers=bob.headers()) as ws:
        await ws.send_json({"follow": [job_id]})
        message = await asyncio.wait_for(ws.receive_json(), 10)
        assert message == {"type": "error", "status": 404, "job": job_id, "detail": "job not found"}


@pytest.mark.parametrize(
    "hostile",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "a" * 5000,
        "appliance:%7Bdefault%7D:spec",
        "*",
        "job%0D%0AX-Injected:%201",
        "%F0%9F%92%A3",
    ],
)
async def test_hostile_ids_answer_404(server: Server, alices_job: tuple[str, str], hostile: str) -> None:
    bob = await server.client("bob")
    for method, path in (
        ("GET", f"/v1/jobs/{hostile}"),
        ("DELETE", f"/v1/jobs/{hostile}"),
        ("GET", f"/v1/jobs/{hostile}/events"),
    ):
        status, body, resp = await bob.call(method, path)
        assert status in (404, 414), (path, status)  # 414: a URL too long for the HTTP parser itself
        assert "X-Injected" not in resp.headers


async def test_unauthenticated_and_wrong_scheme_requests_learn_nothing(
    server: Server, alices_job: tuple[str, str]
) -> None:
    job_id, _ = alices_job
    for headers in (
        {},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": "Bearer apk_0000000000000000_" + "A" * 43},
    ):
        async with server.http.get(f"{server.base}/v1/jobs/{job_id}", headers=headers) as resp:
            assert resp.status == 401
            assert job_id not in await resp.text()


async def test_oversized_bodies_are_refused_before_they_are_read(server: Server) -> None:
    bob = await server.client("bob")
    huge = b'{"service": "echo", "payload": {"x": "' + b"y" * (20 * 1024 * 1024) + b'"}}'
    try:
        status, body, _ = await bob.call(
            "POST", "/v1/jobs", data=huge, headers={"Content-Type": "application/json"}
        )
    except aiohttp.ClientError:  # the server may close the connection once it has answered 413
        status, body = 413, {"detail": "limit"}
    assert status == 413 and "limit" in body["detail"]
    assert (await server.queue.stats()).totals.get("submitted", 0) == 0
