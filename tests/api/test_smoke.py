from __future__ import annotations

from tests.api.conftest import Server


async def test_submit_and_read(server: Server) -> None:
    alice = await server.client("alice")
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"a": 1}})
    assert status == 202, body
    assert body["customer_id"] == "alice"
    status, got, _ = await alice.call("GET", f"/v1/jobs/{body['id']}")
    assert status == 200 and got["id"] == body["id"]
    status, page, _ = await alice.call("GET", "/v1/jobs")
    assert status == 200 and [j["id"] for j in page["jobs"]] == [body["id"]]
