"""The tracebacks people met (issue 12, item 10), each now one line or the right behaviour; real processes, real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from appliance.localredis import LocalRedis, free_port
from appliance.queue import JobSpec, Queue
from appliance.queue.keys import CHANNEL_COMPLETED


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(values)
    return env


def appliance(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed one-shot command printed (asserts there was exactly one, and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), proc.stderr
    return lines[0]


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A service logs as it starts; its error is its last line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("appliance: error: "), proc.stderr
    return lines[-1]


@pytest.mark.parametrize(
    "url,needle",
    [
        ("http://127.0.0.1:6379/0", "scheme must be redis://"),
        ("127.0.0.1:6379", "scheme must be redis://"),
        ("localhost:6379", "scheme must be redis://"),
        ("redis://127.0.0.1:99999/0", "port out of range"),
        ("redis://127.0.0.1:6379/zero", "database number"),
    ],
)
def test_a_bad_redis_url_is_named_by_config_check_and_every_process(
    url: str, needle: str, tmp_path: Path
) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[redis]\nurl = "{url}"\n')
    check = appliance("config", "check", str(config), env=env_with())
    assert check.returncode == 2 and needle in error_line(check) and "redis.url" in error_line(check)
    env = env_with(APPLIANCE_REDIS_URL=url, APPLIANCE_CONNECTORS__ECHO__ENABLED="true")
    for argv in (
        ["worker", "--slot", "echo0"],
        ["machine", "--unmanaged", "--health-port", "0"],
        ["job", "stats"],
    ):
        proc = appliance(*argv, env=env)
        # A service that cannot start as configured exits EX_CONFIG (78); a one-shot command calls it bad input.
        expected = 78 if argv[0] in ("worker", "machine") else 2
        assert proc.returncode == expected and needle in error_line(proc), argv
    flag = appliance("job", "stats", "--redis-url", url, env=env_with())
    assert flag.returncode == 2 and needle in error_line(flag) and "--redis-url" in error_line(flag)


def test_a_password_in_a_bad_url_is_not_shown(tmp_path: Path) -> None:
    proc = appliance("job", "stats", env=env_with(APPLIANCE_REDIS_URL="redis://:hunter2@127.0.0.1:99999/0"))
    assert proc.returncode == 2 and "port out of range" in error_line(proc) and "hunter2" not in proc.stderr


def test_payload_files_that_are_not_text_or_absurdly_deep(tmp_path: Path) -> None:
    env = env_with(APPLIANCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # never reached
    binary = tmp_path / "payload.json"
    binary.write_bytes(b'{"prompt": "\xff\xfe"}')
    proc = appliance("job", "submit", "--service", "echo", "--payload", f"@{binary}", env=env)
    assert proc.returncode == 2 and "not UTF-8" in error_line(proc) and str(binary) in error_line(proc)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    proc = appliance("job", "submit", "--service", "echo", "--payload", f"@{deep}", env=env)
    assert proc.returncode == 2 and "nested too deeply" in error_line(proc)
    # Deep enough to break serialising (pydantic stops near 255 levels), shallow enough to parse.
    middling = "[" * 300 + "]" * 300
    proc = appliance("job", "submit", "--service", "echo", "--payload", f'{{"a": {middling}}}', env=env)
    assert proc.returncode == 2 and "payload: nested deeper than 100 levels" in error_line(proc)


def _without_openai(tmp_path: Path) -> dict[str, str]:
    """An interpreter on which `import openai` fails, as on a host installed without the extra."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['openai'] = None  # import openai fails\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}


def test_a_connector_whose_package_is_missing_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("[connectors.openai]\nenabled = true\n")
    blocked = _without_openai(tmp_path)
    installed = appliance("config", "check", str(config), env=env_with())
    assert installed.returncode == 0 and installed.stdout.strip() == "ok", installed.stderr
    check = appliance("config", "check", str(config), env=env_with(**blocked))
    assert check.returncode == 2 and "'openai'" in error_line(check) and "not installed" in error_line(check)
    worker = appliance(
        "worker",
        "--connector",
        "openai",
        env=env_with(**blocked, APPLIANCE_CONFIG=str(config), APPLIANCE_REDIS_URL="redis://127.0.0.1:1/0"),
    )
    assert (
        worker.returncode == 78 and "'openai'" in last_line(worker) and "not installed" in last_line(worker)
    )


def test_a_worker_without_access_to_its_drain_flag_says_which_key() -> None:
    with LocalRedis(extra_args=["--requirepass", "admin-pw"]) as server:
        admin = redis.Redis(port=server.port, password="admin-pw")
        # Everything a worker of machine m1 uses, except machine:{m1}:drain.
        admin.execute_command(
            "ACL", "SETUSER", "w1", "on", ">w1-pw", "+@all", "&*", "~appliance:*",
            "~machine:{m1}:info", "~machine:{m1}:status", "~machine:{m1}:events", "~machine:status:*",
        )  # fmt: skip
        admin.close()
        env = env_with(
            APPLIANCE_REDIS_URL=server.url,
            APPLIANCE_REDIS__USERNAME="w1",
            APPLIANCE_REDIS__PASSWORD="w1-pw",
            APPLIANCE_MACHINE__ID="m1",
            APPLIANCE_CONNECTORS__ECHO__ENABLED="true",
        )
        proc = appliance("worker", "--slot", "echo0", env=env)
    assert proc.returncode == 4
    line = last_line(proc)
    assert "machine:{m1}:drain" in line and "NOPERM" in line and "cannot reach" not in line


def test_a_refused_ping_says_redis_was_reached() -> None:
    with LocalRedis(extra_args=["--requirepass", "admin-pw"]) as server:
        admin = redis.Redis(port=server.port, password="admin-pw")
        admin.execute_command("ACL", "SETUSER", "noping", "on", ">np", "-@all", "+auth", "+hello", "~*")
        admin.close()
        base = {"APPLIANCE_REDIS_URL": server.url, "APPLIANCE_REDIS__USERNAME": "noping"}
        refused = appliance("job", "stats", env=env_with(**base, APPLIANCE_REDIS__PASSWORD="np"))
        supervisor = stderr_until(
            ["machine", "--unmanaged", "--health-port", "0"],
            env_with(**base, APPLIANCE_REDIS__PASSWORD="np", APPLIANCE_MACHINE__ID="m1"),
            "retrying",
        )
        wrong = appliance("job", "stats", env=env_with(**base, APPLIANCE_REDIS__PASSWORD="not-it"))
    down = appliance("job", "stats", env=env_with(APPLIANCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    assert refused.returncode == wrong.returncode == down.returncode == 4
    assert "reached Redis" in error_line(refused) and "NOPERM" in error_line(refused)
    assert "'ping'" in error_line(refused) and "cannot reach" not in error_line(refused)
    assert "reached Redis" in error_line(wrong) and "refused the credentials" in error_line(wrong)
    assert "cannot reach Redis" in error_line(down)
    # The supervisor keeps waiting (ACLs can change), and says what it waits for.
    waiting = [line for line in supervisor.splitlines() if "retrying" in line]
    assert waiting and "reached Redis" in waiting[0] and "NOPERM" in waiting[0], supervisor
    assert "unreachable" not in supervisor and "Traceback" not in supervisor


def stderr_until(argv: list[str], env: dict[str, str], needle: str, timeout_s: float = 60) -> str:
    """Run a service until `needle` shows on its stderr (or `timeout_s` passes), stop it, return its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    timer = threading.Timer(timeout_s, proc.kill)  # readline below blocks: this bounds it
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                break
    finally:
        timer.cancel()
        proc.terminate()
        try:
            rest = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1]
    return "".join(seen) + (rest or "")


async def _submit_many(url: str, count: int) -> None:
    queue = await Queue.connect(url)
    try:
        await queue.submit_many([JobSpec(service="echo", payload={"text": "x" * 500}) for _ in range(count)])
    finally:
        await queue.close()


def test_job_list_into_a_closed_pipe_exits_quietly(redis_url: str) -> None:
    asyncio.run(_submit_many(redis_url, 300))  # far more than a pipe buffer of JSON
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "job", "list", "--json", "--limit", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_with(APPLIANCE_REDIS_URL=redis_url),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10)  # what `head -c 10` reads, then it goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


async def test_job_wait_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = LocalRedis(
        extra_args=["--appendonly", "yes", "--appendfsync", "always"], workdir=tmp_path
    ).start()
    try:
        queue = await Queue.connect(server.url)
        job = await queue.submit(JobSpec(service="echo"))
        await queue.close()
        waiter = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance", "job", "wait", job.id, "--json", "--timeout", "120",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env_with(APPLIANCE_REDIS_URL=server.url),
        )  # fmt: skip
        await _until_subscribed(server)
        server.kill()
        await asyncio.sleep(0.5)  # the waiter sees its connection drop and starts reconnecting
        assert waiter.returncode is None
        server.start()
        await _until_subscribed(server)  # it came back on its own
        queue = await Queue.connect(server.url)
        try:
            claimed = await queue.claim("w", [job.shape])
            assert claimed is not None and claimed.job.id == job.id
            await queue.complete(job.id, claimed.token, {"answer": 42})
        finally:
            await queue.close()
        out, err = await asyncio.wait_for(waiter.communicate(), 60)
    finally:
        server.cleanup()
    assert waiter.returncode == 0, err.decode()
    assert json.loads(out)["result"] == {"answer": 42}
    assert b"Traceback" not in err and b"reconnecting" in err


async def _until_subscribed(server: LocalRedis, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = redis.Redis(port=server.port)
        try:
            if dict(client.pubsub_numsub(CHANNEL_COMPLETED)).get(CHANNEL_COMPLETED.encode(), 0) > 0:
                return
        except redis.ConnectionError:
            pass
        finally:
            client.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the waiter never subscribed")
