"""A fleet on Redis Sentinel (one primary, one replica, three sentinels), through a `kill -9` of the primary.

Workers, the CLI and the machine supervisor run in `redis.mode = sentinel`; the sentinels promote the replica
within their failover time (down-after 1 s, failover-timeout 3 s) and every process follows it: jobs submitted
before and after complete exactly once (per job id), the supervisor's registration is refreshed on the new
primary, no log has a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings
from appliance.localredis import free_port
from appliance.queue import Queue
from appliance.queue.factory import connect_queue
from tests.cluster.conftest import Fleet, base_env, cli, needs_sentinel
from tests.cluster.servers import SentinelSet, wait_until
from tests.cluster.test_cluster_fleet import completed_once
from tests.machine.notifysock import NotifySocket
from tests.worker.test_worker_process import DEADLINE_S, eventually

pytestmark = [needs_sentinel, pytest.mark.slow, pytest.mark.integration]

QUEUE = "sq"


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path).start()
    yield s
    s.cleanup()


def sentinel_env(s: SentinelSet, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(
        tmp_path,
        APPLIANCE_REDIS__MODE="sentinel",
        APPLIANCE_REDIS__SENTINELS=json.dumps(s.addresses),
        APPLIANCE_REDIS__MASTER_NAME=s.MASTER,
        APPLIANCE_REDIS__QUEUE=QUEUE,
        **extra,
    )


def sentinel_settings(s: SentinelSet, **queue: object) -> Settings:
    return Settings.model_validate(
        {
            "redis": {"mode": "sentinel", "sentinels": s.addresses, "master_name": s.MASTER, "queue": QUEUE},
            "queue": queue,
        }
    )


async def fail_over(s: SentinelSet) -> None:
    """kill -9 the primary; return once the sentinels name the replica as the primary."""
    old = s.primary_port()
    assert old == s.primary.port
    s.primary.kill()
    await asyncio.to_thread(wait_until, lambda: s.primary_port() == s.replica.port, "the replica's promotion")


def start_machine(
    env: dict[str, str], notify: NotifySocket, health: int, log: Any
) -> subprocess.Popen[bytes]:
    """`appliance machine` (no systemd: its services are unmanaged) with fast status, logging to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "machine"],
        env={
            **env,
            "NOTIFY_SOCKET": notify.path,
            "APPLIANCE_MACHINE__TYPE": "api",
            "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "0.5",
            "APPLIANCE_CONNECTORS__ECHO__ENABLED": "true",
            "APPLIANCE_HEALTH__HOST": "127.0.0.1",
            "APPLIANCE_HEALTH__PORT": str(health),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def test_workers_cli_and_supervisor_follow_a_failover(
    sentinels: SentinelSet, fleet: Fleet, tmp_path: Path
) -> None:
    env = sentinel_env(sentinels, tmp_path)
    workers = [fleet.start(env, "--connector", "echo", "--index", str(i)) for i in range(2)]
    notify = NotifySocket()
    health = free_port()
    machine_log = (tmp_path / "machine.log").open("wb")
    machine = start_machine(env, notify, health, machine_log)
    queue: Queue | None = None
    try:
        for worker in workers:
            await worker.ready()
        await asyncio.to_thread(notify.wait_line, "READY=1")
        queue = await connect_queue(sentinel_settings(sentinels))
        before = [
            j.id
            for j in await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(8)])
        ]
        await completed_once(queue, before)
        await fail_over(sentinels)
        # The CLI finds the new primary through the sentinels.
        submitted = cli(env, "job", "submit", "--service", "echo", "--payload", '{"after": 1}')
        assert submitted.returncode == 0, submitted.stderr
        by_cli = submitted.stdout.strip().splitlines()[-1]
        waited = cli(env, "job", "wait", by_cli, "--json", "--timeout", str(DEADLINE_S))
        assert waited.returncode == 0, waited.stderr
        # This process's client follows too, and the workers run what it submits.
        after = [
            j.id
            for j in await queue.submit_many([{"service": "echo", "payload": {"m": i}} for i in range(8)])
        ]
        await completed_once(queue, [*before, by_cli, *after])
        # The supervisor refreshes its registration on the new primary.
        promoted = sentinels.replica_client()
        failed_over_at = int(promoted.time()[0]) * 1000

        async def refreshed() -> bool:
            seen = await asyncio.to_thread(promoted.hget, "machine:{mcl}:info", "last_seen")
            return seen is not None and int(seen) > failed_over_at

        await eventually(refreshed, "the supervisor's registration on the new primary")
        assert fleet.tracebacks() == []
    finally:
        if queue is not None:
            await queue.close()
        if machine.poll() is None:
            machine.send_signal(signal.SIGTERM)
            try:
                machine.wait(60)
            except subprocess.TimeoutExpired:
                machine.kill()
        machine_log.close()
        notify.close()
    log = (tmp_path / "machine.log").read_text(errors="replace")
    print(f"--- machine log ---\n{log}")
    assert "Traceback" not in log
