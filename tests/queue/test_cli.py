"""The `appliance job` contract that scripts and operators depend on, run as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from appliance.localredis import LocalRedis
from appliance.queue import Queue


def run(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    base["APPLIANCE_REDIS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "appliance", "job", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
    )


def test_submit_prints_the_id_last_and_get_shows_status(redis_url: str) -> None:
    out = run(
        redis_url,
        "submit",
        "--service",
        "echo",
        "--payload",
        '{"prompt": "hi"}',
        "--priority",
        "3",
        "--requires",
        "gpu_memory_gb=24",
        "--requires",
        "tag=sdxl",
        "--max-retries",
        "2",
        "--timeout",
        "60",
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[-1]
    got = run(redis_url, "get", job_id, "--json")
    assert got.returncode == 0
    record = json.loads(got.stdout)
    assert record["id"] == job_id and record["status"] == "pending" and record["priority"] == 3
    assert record["requirements"]["gpu_memory_gb"] == 24 and record["requirements"]["tags"] == ["sdxl"]
    assert record["max_retries"] == 2 and record["timeout_s"] == 60 and record["payload"] == {"prompt": "hi"}
    assert record["unworkable"] is True  # no worker registered at all


def test_submit_json_prints_the_record_then_the_id(redis_url: str, tmp_path) -> None:
    payload = tmp_path / "p.json"
    payload.write_text('{"a": 1}')
    out = run(redis_url, "submit", "--service", "echo", "--payload", f"@{payload}", "--json", "--id", "job-7")
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "job-7"
    assert json.loads("\n".join(lines[:-1]))["payload"] == {"a": 1}
    again = run(redis_url, "submit", "--service", "echo", "--id", "job-7")
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["submit", "--service", "echo", "--payload", "{nope"], "--payload: not valid JSON"),
        (["submit", "--service", "echo", "--payload", "[1]"], "must be a JSON object"),
        (["submit", "--service", "echo", "--requires", "colour=red"], "unknown key 'colour'"),
        (
            ["submit", "--service", "echo", "--requires", "gpu_memory_gb=lots"],
            "gpu_memory_gb must be a float",
        ),
        (["submit", "--service", "echo", "--priority", "5000"], "priority"),
        (["submit", "--service", "echo", "--requires", "isolation=strict"], "needs a customer_id"),
        (["submit", "--service", "echo", "--payload", "@/no/such/file"], "cannot read /no/such/file"),
    ],
)
def test_bad_input_is_one_clear_line(redis_url: str, args: list[str], needle: str) -> None:
    out = run(redis_url, *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unknown_job_and_unreachable_redis(redis_url: str) -> None:
    out = run(redis_url, "get", "nope")
    assert out.returncode == 3 and "not found" in out.stderr
    down = run("redis://127.0.0.1:1/0", "stats")
    assert down.returncode == 4 and "cannot reach Redis" in down.stderr and "Traceback" not in down.stderr


async def test_wait_cancel_list_stats(redis_url: str) -> None:
    job_id = run(redis_url, "submit", "--service", "echo").stdout.split()[-1]
    waiting = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "job",
        "wait",
        job_id,
        "--json",
        "--timeout",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "APPLIANCE_REDIS_URL": redis_url},
    )
    queue = await Queue.connect(redis_url)
    try:
        job = await queue.get(job_id)
        claimed = await queue.claim("w", [job.shape])
        await queue.complete(job_id, claimed.token, {"answer": 42})
    finally:
        await queue.close()
    out, err = await asyncio.wait_for(waiting.communicate(), 30)
    assert waiting.returncode == 0, err
    assert json.loads(out)["result"] == {"answer": 42}

    other = run(redis_url, "submit", "--service", "echo").stdout.split()[-1]
    listed = json.loads(run(redis_url, "list", "--status", "pending", "--json").stdout)
    assert [j["id"] for j in listed] == [other]
    cancelled = run(redis_url, "cancel", other)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert json.loads(run(redis_url, "get", other, "--json").stdout)["status"] == "cancelled"
    failed_wait = run(redis_url, "wait", other)
    assert failed_wait.returncode == 1
    stats = json.loads(run(redis_url, "stats", "--json").stdout)
    assert stats["totals"]["completed"] == 1 and stats["totals"]["cancelled"] == 1
    timed_out = run(
        redis_url,
        "wait",
        run(redis_url, "submit", "--service", "echo").stdout.split()[-1],
        "--timeout",
        "0.5",
    )
    assert timed_out.returncode == 124


def test_password_is_used_but_never_printed() -> None:
    with LocalRedis(extra_args=["--requirepass", "s3cr3t-pw"]) as server:
        url = f"redis://:s3cr3t-pw@127.0.0.1:{server.port}/0"
        ok = run(url, "submit", "--service", "echo", "--json")
        assert ok.returncode == 0, ok.stderr
        bad = run(f"redis://:wrong-pw@127.0.0.1:{server.port}/0", "stats")
        assert bad.returncode == 4
        for out in (ok, bad):
            assert "s3cr3t-pw" not in out.stdout + out.stderr and "wrong-pw" not in out.stdout + out.stderr


def test_classifier_assigns_a_pool_only_when_enabled(redis_url: str) -> None:
    plain = run(redis_url, "submit", "--service", "echo", "--payload", '{"declared_cost_s": 5}', "--json")
    assert json.loads("\n".join(plain.stdout.splitlines()[:-1]))["pool"] is None
    on = {"APPLIANCE_CLASSIFIER__ENABLED": "true"}
    quick = run(
        redis_url, "submit", "--service", "echo", "--payload", '{"declared_cost_s": 5}', "--json", env=on
    )
    assert json.loads("\n".join(quick.stdout.splitlines()[:-1]))["pool"] == "fast"
    long = run(redis_url, "submit", "--service", "echo", "--timeout", "3600", "--json", env=on)
    assert json.loads("\n".join(long.stdout.splitlines()[:-1]))["pool"] == "heavy"
    named = run(
        redis_url, "submit", "--service", "echo", "--pool", "standard", "--timeout", "5", "--json", env=on
    )
    assert json.loads("\n".join(named.stdout.splitlines()[:-1]))["pool"] == "standard"


def test_submit_refuses_nan_in_the_payload(redis_url: str) -> None:
    # Python's json reads NaN; JSON has none, and it used to be stored as null without a word.
    out = run(redis_url, "submit", "--service", "echo", "--payload", '{"x": NaN}')
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "payload.x is not a finite number" in line


def test_a_payload_over_the_limit_is_refused_in_one_line(redis_url: str, tmp_path) -> None:
    payload = tmp_path / "big.json"
    payload.write_text(json.dumps({"blob": "x" * 1_100_000}))
    out = run(redis_url, "submit", "--service", "echo", "--payload", f"@{payload}")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "over the limit queue.max_payload_bytes=1048576" in lines[0] and "1100" in lines[0], lines[0]
    # A smaller limit from the environment applies the same way; nothing was enqueued by either.
    small = run(
        redis_url,
        "submit",
        "--service",
        "echo",
        "--payload",
        '{"blob": "' + "y" * 5000 + '"}',
        env={"APPLIANCE_QUEUE__MAX_PAYLOAD_BYTES": "4096"},
    )
    assert small.returncode == 2 and "queue.max_payload_bytes=4096" in small.stderr
    assert run(redis_url, "list", "--json").stdout.strip() in ("[]", "")


def test_submit_with_a_delay_waits_and_says_when_it_starts(redis_url: str) -> None:
    out = run(redis_url, "submit", "--service", "echo", "--delay", "3600", "--json")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[-1]
    shown = run(redis_url, "get", job_id)
    assert "pending" in shown.stdout and "next try" in shown.stdout, shown.stdout
    at = run(redis_url, "submit", "--service", "echo", "--run-at", "2030-01-01T00:00", "--json")
    assert at.returncode == 0, at.stderr
    record = json.loads(run(redis_url, "get", at.stdout.strip().splitlines()[-1], "--json").stdout)
    assert record["next_attempt_at"].startswith("2030-01-01T00:00:00")
    both = run(redis_url, "submit", "--service", "echo", "--delay", "5", "--run-at", "2030-01-01")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    bad = run(redis_url, "submit", "--service", "echo", "--run-at", "soon")
    assert bad.returncode == 2 and "run_at" in bad.stderr and "Traceback" not in bad.stderr
