"""The job endpoints over real HTTP: validation naming the field, problem details, idempotency, ?wait, batches
all or nothing, cancel, retry, listing pages, size limits, scopes, revoked keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from appliance.api.keys import Scope
from tests.api.conftest import Server, api_settings, finish


async def test_a_bad_field_is_a_problem_naming_it(server: Server) -> None:
    alice = await server.client("alice")
    status, body, resp = await alice.call("POST", "/v1/jobs", json={"service": "echo", "priority": 5000})
    assert status == 400 and resp.content_type == "application/problem+json"
    assert body["status"] == 400 and "priority" in body["detail"]
    assert [e["field"] for e in body["errors"]] == ["priority"]
    status, body, _ = await alice.call(
        "POST", "/v1/jobs", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "not valid JSON" in body["detail"]
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "id": "mine"})
    assert status == 400 and body["detail"].startswith("id:")
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "customer_id": "bob"})
    assert status == 400 and "customer_id" in body["detail"]


async def test_keys_are_required_checked_and_scoped(server: Server) -> None:
    alice = await server.client("alice", [Scope.READ])
    async with server.http.get(server.base + "/v1/jobs") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert resp.content_type == "application/problem+json"
    async with server.http.get(
        server.base + "/v1/jobs", headers={"Authorization": "Bearer " + alice.token[:-1] + "x"}
    ) as resp:
        assert resp.status == 401
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 403 and "'submit' scope" in body["detail"]
    status, _, _ = await alice.call("GET", "/v1/stats")
    assert status == 403


async def test_a_revoked_key_is_refused_at_once(server: Server) -> None:
    alice = await server.client("alice")
    assert (await alice.call("GET", "/v1/jobs"))[0] == 200
    (key,) = [k for k in await server.store.list() if k.tenant == "alice"]
    assert await server.store.revoke(key.id)
    assert (await alice.call("GET", "/v1/jobs"))[0] == 401


async def test_the_same_idempotency_key_and_body_give_the_same_job(server: Server) -> None:
    alice = await server.client("alice")
    job = {"service": "echo", "payload": {"n": 1}}
    first = await alice.call("POST", "/v1/jobs", json=job, headers={"Idempotency-Key": "k1"})
    again = await alice.call("POST", "/v1/jobs", json=job, headers={"Idempotency-Key": "k1"})
    assert first[0] == again[0] == 202 and first[1]["id"] == again[1]["id"]
    assert again[2].headers["Idempotent-Replayed"] == "true"
    status, body, _ = await alice.call(
        "POST", "/v1/jobs", json={**job, "payload": {"n": 2}}, headers={"Idempotency-Key": "k1"}
    )
    assert status == 409 and "different body" in body["detail"]
    assert (await server.queue.stats()).totals["submitted"] == 1
    # Keys are per tenant: bob's k1 is another request.
    bob = await server.client("bob")
    assert (await bob.call("POST", "/v1/jobs", json=job, headers={"Idempotency-Key": "k1"}))[1][
        "id"
    ] != first[1]["id"]
    # A refused request does not hold its key: fixed and sent again with it, it goes through.
    assert (await alice.call("POST", "/v1/jobs", json={"service": "!"}, headers={"Idempotency-Key": "k2"}))[
        0
    ] == 400
    assert (await alice.call("POST", "/v1/jobs", json=job, headers={"Idempotency-Key": "k2"}))[0] == 202


async def test_wait_answers_with_the_finished_job_or_202(server: Server) -> None:
    alice = await server.client("alice")
    status, body, _ = await alice.call("POST", "/v1/jobs?wait=0.3", json={"service": "echo"})
    assert status == 202 and body["status"] == "pending"

    async def worker() -> None:
        for _ in range(3000):  # until the API has submitted it (polled: the test has no other signal)
            if (await server.queue.stats()).waiting:
                break
            await asyncio.sleep(0.02)
        ids = [j.id for j in await server.queue.list_jobs()]
        for job_id in ids:
            if (await server.queue.require(job_id)).status.value == "pending":
                await finish(server.queue, job_id, result={"echo": 7})

    await finish(server.queue, body["id"])
    task = asyncio.create_task(worker())
    status, body, _ = await alice.call("POST", "/v1/jobs?wait=30", json={"service": "echo"})
    await task
    assert status == 200 and body["status"] == "completed" and body["result"] == {"echo": 7}
    for bad in ("61", "-1", "x"):
        status, problem, _ = await alice.call("POST", f"/v1/jobs?wait={bad}", json={"service": "echo"})
        assert status == 400 and problem["detail"].startswith("wait:")


async def test_a_batch_is_all_or_nothing(server: Server) -> None:
    alice = await server.client("alice")
    jobs = [{"service": "echo"}, {"service": "echo", "requirements": {"gpu_count": 999}}, {"service": "echo"}]
    status, body, _ = await alice.call("POST", "/v1/jobs/batch", json={"jobs": jobs})
    assert status == 400 and "jobs.1.requirements.gpu_count" in body["detail"]
    assert (await server.queue.stats()).totals.get("submitted", 0) == 0
    status, body, _ = await alice.call("POST", "/v1/jobs/batch", json={"jobs": [jobs[0], jobs[2]]})
    assert status == 202 and len(body["jobs"]) == 2
    assert {j["customer_id"] for j in body["jobs"]} == {"alice"}


async def test_cancel_and_retry(server: Server) -> None:
    alice = await server.client("alice")
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    status, body, _ = await alice.call("DELETE", f"/v1/jobs/{job['id']}")
    assert status == 200 and body["outcome"] == "cancelled" and body["job"]["status"] == "cancelled"
    assert (await alice.call("DELETE", f"/v1/jobs/{job['id']}"))[0] == 409
    assert (await alice.call("POST", f"/v1/jobs/{job['id']}/retry"))[0] == 409
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    await finish(server.queue, job["id"], "failed")
    status, body, _ = await alice.call("POST", f"/v1/jobs/{job['id']}/retry")
    assert status == 202 and body["status"] == "pending" and body["attempts"] == 0


async def test_listing_pages_through_the_tenants_jobs_only(server: Server) -> None:
    alice, bob = await server.client("alice"), await server.client("bob")
    mine = [(await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[1]["id"] for _ in range(5)]
    await bob.call("POST", "/v1/jobs", json={"service": "echo"})
    await alice.call("DELETE", f"/v1/jobs/{mine[1]}")
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await alice.call("GET", "/v1/jobs" + query)
        assert status == 200
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(mine))
    _, page, _ = await alice.call("GET", "/v1/jobs?status=cancelled&limit=10")
    assert [j["id"] for j in page["jobs"]] == [mine[1]]
    for bad in ("status=nope", "limit=0", "limit=201", "cursor=abc"):
        status, body, _ = await alice.call("GET", "/v1/jobs?" + bad)
        assert status == 400 and body["detail"].split(":")[0] == bad.split("=")[0]


async def test_bodies_over_the_size_limit_are_413(make_server) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings()
    settings.queue.max_payload_bytes = 4096
    server = await make_server(settings)
    alice = await server.client("alice")
    status, body, _ = await alice.call(
        "POST", "/v1/jobs", json={"service": "echo", "payload": {"x": "y" * 30_000}}
    )
    assert status == 413 and "limit" in body["detail"]
    status, body, _ = await alice.call(
        "POST", "/v1/jobs", json={"service": "echo", "payload": {"x": "y" * 8000}}
    )
    assert status == 413 and "max_payload_bytes" in body["detail"]

    async def chunked(
        size: int,
    ) -> AsyncIterator[bytes]:  # no Content-Length: the limit is checked on what arrives
        yield b'{"service": "echo", "payload": {"x": "'
        yield b"y" * size
        yield b'"}}'

    for size in (30_000, 200_000):
        try:
            status, body, _ = await alice.call(
                "POST", "/v1/jobs", data=chunked(size), headers={"Content-Type": "application/json"}
            )
        except aiohttp.ClientError:  # the server may close the connection once it has answered 413
            status, body = 413, {"detail": "limit"}
        assert status == 413 and "limit" in body["detail"]
    status, body, _ = await alice.call(
        "POST", "/v1/jobs", data=chunked(100), headers={"Content-Type": "application/json"}
    )
    assert status == 202, body
    assert (await server.queue.stats()).totals.get("submitted", 0) == 1


async def test_outputs_stream_from_local_storage(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings()
    settings.storage.local_dir = tmp_path
    server = await make_server(settings)
    alice, bob = await server.client("alice"), await server.client("bob")
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    (tmp_path / job["id"]).mkdir()
    (tmp_path / job["id"] / "image.png").write_bytes(b"\x89PNG...")
    (tmp_path / "secret.txt").write_text("not an output")
    status, body, _ = await alice.call("GET", f"/v1/jobs/{job['id']}/outputs/image.png")
    assert status == 200 and body == b"\x89PNG..."
    assert (await bob.call("GET", f"/v1/jobs/{job['id']}/outputs/image.png"))[0] == 404
    for name in ("..%2Fsecret.txt", "%2E%2E", ".hidden", "missing.png"):
        assert (await alice.call("GET", f"/v1/jobs/{job['id']}/outputs/{name}"))[0] == 404, name


async def test_the_job_view_says_which_limit_holds_a_job(server: Server) -> None:
    alice = await server.client("alice")
    await server.queue.limits.set("alice", max_in_flight=1)  # the key's tenant is the jobs' customer
    ids = [(await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[1]["id"] for _ in range(2)]
    shape = (await server.queue.require(ids[0])).shape
    assert (await server.queue.claim("w", [shape])) is not None
    assert await server.queue.claim("w", [shape]) is None  # the second waits for alice's slot
    status, body, _ = await alice.call("GET", f"/v1/jobs/{ids[1]}")
    assert status == 200 and body["status"] == "pending" and not body["unworkable"]
    assert body["held_by"] == "customer alice at in-flight cap 1/1"
