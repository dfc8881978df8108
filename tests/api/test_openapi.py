"""The OpenAPI document: generated from the models, served at /openapi.json, committed as docs/openapi.json; and
schemathesis run against a live server: every operation, no 5xx, every response as the document says."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from appliance.api.keys import Scope
from appliance.api.openapi import document
from tests.api.conftest import Server, api_settings

COMMITTED = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_the_committed_document_is_the_generated_one() -> None:
    assert json.loads(COMMITTED.read_text()) == document(), (
        "docs/openapi.json is stale: python -m appliance.api.openapi > docs/openapi.json"
    )


async def test_every_route_is_documented(server: Server) -> None:
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in server.running.runner.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {
        (path, method)
        for path, ops in document()["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert routes == documented


async def test_the_server_serves_the_document(server: Server) -> None:
    async with server.http.get(server.base + "/openapi.json") as resp:
        assert resp.status == 200 and await resp.json() == document()


@pytest.mark.slow
async def test_schemathesis_finds_no_5xx_and_no_response_off_the_schema(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    server = await make_server(api_settings(max_wait_s=0.5, rate_per_s=100_000))
    admin = await server.client("alice", [Scope.SUBMIT, Scope.READ, Scope.CANCEL, Scope.ADMIN])
    await admin.call("POST", "/v1/jobs", json={"service": "echo"})
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    proc = await asyncio.create_subprocess_exec(
        st,
        "run",
        server.base + "/openapi.json",
        "--url",
        server.base,
        "-H",
        f"Authorization: Bearer {admin.token}",
        "--checks",
        checks,
        "--max-examples",
        "5",
        "--phases",
        "examples,fuzzing",
        "--request-timeout",
        "20",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--exclude-path",
        "/v1/ws",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
