from __future__ import annotations

import logging

from tests.api.conftest import Server, api_settings


async def test_submit_and_read(server: Server) -> None:
    alice = await server.client("alice")
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"a": 1}})
    assert status == 202, body
    assert body["customer_id"] == "alice"
    status, got, _ = await alice.call("GET", f"/v1/jobs/{body['id']}")
    assert status == 200 and got["id"] == body["id"]
    status, page, _ = await alice.call("GET", "/v1/jobs")
    assert status == 200 and [j["id"] for j in page["jobs"]] == [body["id"]]


async def test_the_access_log_is_off_unless_asked_for(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    """Formatting a line per request costs every request CPU time: none by default, one per request with
    api.access_log, and never the bearer token."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    quiet = await make_server()
    alice = await quiet.client("alice")
    status, _, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 202
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
    logged = await make_server(api_settings(access_log=True))
    bob = await logged.client("bob")
    status, _, _ = await bob.call("POST", "/v1/jobs?wait=0", json={"service": "echo"})
    assert status == 202
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 1 and "POST /v1/jobs?wait=0" in lines[0] and " 202 " in lines[0]
    assert bob.token not in lines[0] and "apk_" not in lines[0]
