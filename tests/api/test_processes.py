"""`appliance api --processes 2` (`api.processes`): two real API processes serve one port (SO_REUSEPORT), both
answer, they share the per-key limits, SIGTERM stops both, and one that dies stops the service with a failure
(systemd restarts it)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from appliance.api.keys import KeyStore, Scope
from appliance.queue import Queue
from tests.api.conftest import free_port, wait_ready

_POSTS = re.compile(
    r'^appliance_api_requests_total\{method="POST",route="/v1/jobs",status="202"\} (\S+)$', re.M
)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def listeners(port: int) -> int:
    """Sockets listening on `port` (state 0A in /proc/net/tcp)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


async def both_ready(base: str) -> None:
    """The main process answers first; the other is ready once it listens too (the main tells systemd READY
    only then)."""
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, base)
    for _ in range(1200):
        if listeners(int(base.rsplit(":", 1)[1])) == 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the second API process does not listen")


@pytest.fixture
def two(redis_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_REDIS_URL=redis_url, APPLIANCE_API__PROCESSES="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "api", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


async def fresh(method: str, url: str, **kwargs: object) -> tuple[int, str]:
    """One request on a new connection: SO_REUSEPORT picks the process per connection."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.text()


async def test_two_processes_serve_one_port_and_stop_together(
    two: tuple[subprocess.Popen[bytes], str], redis_url: str
) -> None:
    proc, base = two
    queue = await Queue.connect(redis_url)
    _, token = await KeyStore(queue.client, queue.keys).create("alice", [Scope.SUBMIT], max_in_flight=30)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        await both_ready(base)
        (child,) = children(proc.pid)
        for _ in range(30):
            assert (await fresh("POST", base + "/v1/jobs", json={"service": "echo"}, headers=headers))[
                0
            ] == 202
        # The in-flight limit is one count for both processes: the 31st job is refused by whichever answers.
        assert (await fresh("POST", base + "/v1/jobs", json={"service": "echo"}, headers=headers))[0] == 429
        # Each process counts the requests it answered: two counts that add up to the 30 accepted.
        counts: set[float] = set()
        for _ in range(60):
            counts |= {float(n) for n in _POSTS.findall((await fresh("GET", base + "/metrics"))[1])}
            if len(counts) == 2:
                break
        # Two different counts add up to 30; two equal ones read as one value here ({15}).
        assert (len(counts) == 2 and sum(counts) == 30) or counts == {15.0}, counts
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert gone(child)  # stopped, and reaped by the main process
    finally:
        await queue.close()


async def test_a_process_that_dies_stops_the_service_with_a_failure(
    two: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, base = two
    await both_ready(base)
    (child,) = children(proc.pid)
    os.kill(child, signal.SIGKILL)
    assert await asyncio.to_thread(proc.wait, 60) == 1


def test_processes_out_of_range_is_one_line(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "api", "--port", "0", "--processes", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "--processes must be between 1 and 64, got 0" in done.stderr
    assert "Traceback" not in done.stderr
