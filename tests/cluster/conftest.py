"""Fixtures of the Cluster and Sentinel tests: real servers on loopback, workers and CLI as real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.servers import RedisClusterNodes
from tests.worker.test_worker_process import QUEUE_ENV, NotifySocket, WorkerProcess

needs_cluster_tools = pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("redis-server") is None,
    reason="redis-server / redis-cli (redis-tools) not installed",
)
needs_sentinel = pytest.mark.skipif(
    shutil.which("redis-sentinel") is None, reason="redis-sentinel not installed"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes().start()
    yield nodes
    nodes.cleanup()


def base_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a worker or CLI process: nothing of ours inherited, short queue timings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APPLIANCE_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))
    }
    env.update(QUEUE_ENV)
    env.update(
        {
            "APPLIANCE_MACHINE__ID": "mcl",
            "APPLIANCE_STORAGE__LOCAL_DIR": str(tmp_path / "outputs"),
            "APPLIANCE_WORKER__CLAIM_TIMEOUT_S": "2",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
    )
    return env


class Fleet:
    """Worker processes started by a test; each logs to its own file, all killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []

    def start(self, env: dict[str, str], *args: str) -> WorkerProcess:
        n = len(self.workers)
        notify = NotifySocket(self.tmp_path / f"notify{n}.sock")
        worker = WorkerProcess(
            list(args), {**env, "NOTIFY_SOCKET": str(notify.path)}, self.tmp_path / f"worker{n}.log", notify
        )
        self.workers.append(worker)
        return worker

    def tracebacks(self) -> list[str]:
        return [w.log for w in self.workers if "Traceback" in w.log]

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
            worker.notify.close()
            print(f"--- worker {worker.args} log ---\n{worker.log}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.close()


def cli(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`appliance ARGS...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )
