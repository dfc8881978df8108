"""Real Redis deployments on loopback for the Cluster and Sentinel tests: started here, killed here.

`RedisClusterNodes`: three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`, with a
slot mover (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) for resharding under load.
`SentinelSet`: one primary, one replica and three `redis-server --sentinel` watching them, with short
down-after / failover timeouts so a failover takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from appliance.localredis import LocalRedis, free_port


def wait_until(check: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class RedisClusterNodes:
    def __init__(self, count: int = 3) -> None:
        self.nodes: list[LocalRedis] = []
        self.count = count

    def start(self) -> RedisClusterNodes:
        for _ in range(self.count):
            self.nodes.append(
                LocalRedis(
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        # An explicit bus port: the default (port + 10000) can fall outside the port range.
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", "2000",
                    ]
                ).start()
            )  # fmt: skip
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._all_ok, "cluster_state:ok on every node")
        return self

    def _all_ok(self) -> bool:
        for node in self.nodes:
            info = self.client(node.port).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in str(info):
                return False
        return True

    @property
    def seed(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True)

    def node_id(self, port: int) -> str:
        return str(self.client(port).execute_command("CLUSTER", "MYID"))

    def owner(self, slot: int) -> int:
        """Port of the node that serves `slot`."""
        for start, end, primary, *_ in self.client(self.nodes[0].port).execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def move_slot(self, slot: int, target: int) -> int:
        """Move `slot` to the node on port `target` the way `redis-cli --cluster reshard` does, keys in batches
        of a few while clients keep writing; returns how many keys moved."""
        source = self.owner(slot)
        src, dst = self.client(source), self.client(target)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(0.05)  # let clients run into ASK / TRYAGAIN meanwhile
        for node in self.nodes:
            self.client(node.port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        wait_until(lambda: self.owner(slot) == target, f"slot {slot} served by {target}")
        return moved

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class SentinelSet:
    """A primary, a replica and three sentinels; `primary_port()` asks the sentinels who is primary now."""

    MASTER = "appliance-test"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = LocalRedis()
        self.replica = LocalRedis()
        self.sentinel_ports: list[int] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def start(self) -> SentinelSet:
        # No 5 s wait before the first full sync (the default diskless-sync delay).
        self.primary.extra_args = ["--repl-diskless-sync-delay", "0"]
        self.primary.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        wait_until(
            lambda: self.replica_client().info("replication").get("master_link_status") == "up",
            "the replica to sync",
        )
        executable = shutil.which("redis-sentinel") or "redis-sentinel"
        for i in range(3):
            port = free_port()
            conf = self.workdir / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"logfile {self.workdir / f'sentinel{i}.log'}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 3000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            self.sentinels.append(subprocess.Popen([executable, str(conf)]))
            self.sentinel_ports.append(port)
        wait_until(lambda: all(self._knows_replica(p) for p in self.sentinel_ports), "sentinels to see both")
        return self

    def _knows_replica(self, port: int) -> bool:
        try:
            replicas = redis.Redis(port=port, decode_responses=True).execute_command(
                "SENTINEL", "REPLICAS", self.MASTER
            )
            others = redis.Redis(port=port, decode_responses=True).execute_command(
                "SENTINEL", "SENTINELS", self.MASTER
            )
        except redis.RedisError:
            return False
        return len(replicas) == 1 and len(others) == 2

    def replica_client(self) -> redis.Redis:
        return redis.Redis(port=self.replica.port, decode_responses=True)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def primary_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                host, found = redis.Redis(port=port, decode_responses=True).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER
                )
                return int(found)
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def cleanup(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.primary.cleanup()
        self.replica.cleanup()
