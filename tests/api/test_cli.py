"""`appliance api keys create|list|revoke` as an operator runs them: the token is printed once (the last line),
only its hash is stored, and a revoked key is refused by a running API at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from appliance.api.keys import KeyStore
from tests.api.conftest import Server


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", "api", "keys", *args, "--redis-url", redis_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def test_keys_create_list_revoke(server: Server, redis_url: str) -> None:
    made = cli(redis_url, "create", "--tenant", "acme", "--scopes", "submit,read", "--name", "web", "--json")
    assert made.returncode == 0, made.stderr
    *record_lines, token = made.stdout.strip().splitlines()
    record = json.loads("\n".join(record_lines))
    assert token.startswith(f"apk_{record['id']}_") and record["tenant"] == "acme"
    stored = await server.queue.client.hvals(KeyStore(server.queue.client, server.queue.keys).key)
    assert len(stored) == 1 and token not in stored[0] and "token_sha256" in stored[0]

    listed = cli(redis_url, "list")
    assert listed.returncode == 0 and record["id"] in listed.stdout and token not in listed.stdout
    assert "scopes=read,submit" in listed.stdout

    headers = {"Authorization": f"Bearer {token}"}
    async with server.http.get(server.base + "/v1/jobs", headers=headers) as resp:
        assert resp.status == 200
    assert cli(redis_url, "revoke", record["id"]).returncode == 0
    async with server.http.get(server.base + "/v1/jobs", headers=headers) as resp:
        assert resp.status == 401
    again = cli(redis_url, "revoke", record["id"])
    assert again.returncode == 3 and "no API key" in again.stderr


def test_bad_arguments_are_one_line(redis_url: str) -> None:
    for args, needle in (
        (["create", "--tenant", "a b"], "--tenant"),
        (["create", "--tenant", "a", "--scopes", "read,root"], "--scopes: 'root'"),
        (["create", "--tenant", "a", "--rate", "0"], "--rate"),
    ):
        done = cli(redis_url, *args)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr
