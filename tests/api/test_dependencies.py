"""`after` over HTTP: a job waits for its own customer's jobs (blocked until they complete); another customer's
job reads exactly like an unknown one, so a worker never hands one customer's results to another's job."""

from __future__ import annotations

from tests.api.conftest import Server, finish


async def test_a_job_waits_for_its_parent_over_http(server: Server) -> None:
    alice = await server.client("alice")
    status, parent, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 202
    status, child, _ = await alice.call(
        "POST", "/v1/jobs", json={"service": "echo", "after": [parent["id"]], "on_parent_failure": "cancel"}
    )
    assert status == 202, child
    assert child["status"] == "blocked" and child["after"] == [parent["id"]]
    _, got, _ = await alice.call("GET", f"/v1/jobs/{child['id']}")
    assert got["waiting_on"] == [parent["id"]] and got["on_parent_failure"] == "cancel"
    await finish(server.queue, parent["id"], result={"made": 1})
    _, got, _ = await alice.call("GET", f"/v1/jobs/{child['id']}")
    assert got["status"] == "pending" and got["waiting_on"] == []


async def test_another_customers_job_is_no_parent(server: Server) -> None:
    alice, bob = await server.client("alice"), await server.client("bob")
    _, secret, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"secret": 42}})
    unknown = "0123456789abcdef0123456789abcdef"
    answers = []
    for parent in (secret["id"], unknown):
        status, body, _ = await bob.call("POST", "/v1/jobs", json={"service": "echo", "after": [parent]})
        assert status == 400, body
        answers.append(body["detail"].replace(parent, "X"))
    assert answers[0] == answers[1] == "after: job 'X' not found (unknown id, or its record expired)"
    status, body, _ = await bob.call(
        "POST",
        "/v1/jobs/batch",
        json={"jobs": [{"service": "echo"}, {"service": "echo", "after": [secret["id"]]}]},
    )
    assert status == 400, body
    assert (await server.queue.stats()).totals.get("submitted") == 1  # alice's job only


async def test_a_known_keys_fast_path_checks_the_parents_too(server: Server) -> None:
    """A key this process has verified submits in one round trip (onetrip); a job with `after` must still go
    through the parents' ownership check, or another customer's job would be accepted as a parent."""
    alice, bob = await server.client("alice"), await server.client("bob")
    _, secret, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"secret": 42}})
    for _ in range(2):  # bob's key is known to the process after its first request
        status, _, _ = await bob.call("POST", "/v1/jobs", json={"service": "echo"})
        assert status == 202
    status, body, _ = await bob.call("POST", "/v1/jobs", json={"service": "echo", "after": [secret["id"]]})
    assert status == 400, body
    assert body["detail"] == f"after: job {secret['id']!r} not found (unknown id, or its record expired)"
    _, own, _ = await bob.call("POST", "/v1/jobs", json={"service": "echo"})
    status, child, _ = await bob.call("POST", "/v1/jobs", json={"service": "echo", "after": [own["id"]]})
    assert (status, child["status"]) == (202, "blocked")


async def test_a_childs_live_events_say_blocked_then_pending(server: Server) -> None:
    from tests.api.sse import events

    alice = await server.client("alice")
    _, parent, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    _, child, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "after": [parent["id"]]})
    await finish(server.queue, parent["id"])
    await finish(server.queue, child["id"])
    seen = []
    async with server.http.get(
        f"{server.base}/v1/jobs/{child['id']}/events", headers=alice.headers()
    ) as resp:
        async for event in events(resp):
            if event.event == "end":
                break
            seen.append((event.event, event.data["status"]))
    assert seen == [
        ("submitted", "blocked"),
        ("unblocked", "pending"),
        ("claimed", "claimed"),
        ("completed", "completed"),
    ]
