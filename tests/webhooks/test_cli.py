"""`appliance webhooks secret|dead|retry-dead` as a person runs them (real processes, real Redis)."""

from __future__ import annotations

import subprocess

from appliance.commands import ExitCode
from tests.cliproc import run_appliance


def run(redis_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_appliance(redis_url, "webhooks", *argv)


def test_secret_is_made_once_and_rotated(redis_url: str) -> None:
    first = run(redis_url, "secret", "--tenant", "acme")
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip()
    assert secret.startswith("whsec_") and len(secret) > 30
    assert run(redis_url, "secret", "--tenant", "acme").stdout.strip() == secret
    assert run(redis_url, "secret", "--tenant", "other").stdout.strip() != secret
    rotated = run(redis_url, "secret", "--tenant", "acme", "--rotate").stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret
    assert run(redis_url, "secret", "--tenant", "acme").stdout.strip() == rotated


def test_dead_list_and_bad_input(redis_url: str) -> None:
    empty = run(redis_url, "dead", "--tenant", "acme")
    assert empty.returncode == 0 and "no given-up deliveries" in empty.stdout
    assert run(redis_url, "dead", "--tenant", "acme", "--json").stdout.strip().startswith("{")
    missing = run(redis_url, "retry-dead", "--tenant", "acme", "--id", "msg_nope")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert missing.stderr.strip().splitlines() == [
        "appliance: error: 1 of the ids are not in tenant acme's dead list"
    ]
    bad = run(redis_url, "secret", "--tenant", "no spaces")
    assert bad.returncode == ExitCode.USAGE and len(bad.stderr.strip().splitlines()) == 1
    assert "tenant 'no spaces' is not a valid id" in bad.stderr
