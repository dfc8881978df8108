"""Helpers shared by the benchmarks: a private Redis, server-side command costs, tables, percentiles.

Benchmarks are not tests: they print measured figures and ratios against a baseline measured in the same run,
and never assert on time (the machine is noisy). Run them as `python bench/<name>.py [--quick]`.
"""

from __future__ import annotations

import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT))

from appliance.localredis import LocalRedis  # noqa: E402

NOOP_LUA = "return 1"
NOOP_LIBRARY = "#!lua name=benchnoop\nredis.register_function('bench_noop', function() return 1 end)"


@contextmanager
def private_redis(*extra_args: str) -> Iterator[LocalRedis]:
    """A throwaway redis-server on a free loopback port, removed afterwards."""
    server = LocalRedis(extra_args=list(extra_args)).start()
    try:
        yield server
    finally:
        server.cleanup()


def command_cost(info: dict[str, Any], command: str) -> tuple[int, float]:
    """(calls, usec_per_call) of one command from `INFO commandstats` (0 calls when it never ran)."""
    stats = info.get(f"cmdstat_{command}")
    if not stats:
        return 0, float("nan")
    return int(stats["calls"]), float(stats["usec_per_call"])


def redis_benchmark(port: int, requests: int, *command: str, clients: int = 50) -> str:
    """Run redis-benchmark (redis-tools) against the private server; returns its quiet summary line."""
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-q",
            *command,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into docs/performance.md)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def machine_line() -> str:
    """One line naming the machine, so a pasted table says where it was measured."""
    import os

    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    server = next((v.split("=")[1] for v in version if v.startswith("v=")), "?")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-server {server}"
    )


def stop_process_groups(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 10) -> None:
    """Stop every process group the benchmark started (`start_new_session=True`): SIGTERM, SIGKILL after the
    grace, then SIGKILL to what is left in each group (a peer's forked child)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    """Return once a local server (one started under valgrind takes seconds) accepts connections on `port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.2)


def callgrind_window(work: Path, out: str, keep: str | None = None) -> int:
    """The instructions in the callgrind dump named 'window' (the count from the zeroing to the dump) among the
    dumps of `work`/`out`*; the others are deleted, and that one moved to `keep` when given, else deleted too."""
    total = 0
    for name in work.glob(Path(out).name + "*"):
        text = name.read_text()
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if "window" in text and found:
            total = int(found.group(1))
            if keep:
                name.replace(keep)
                continue
        name.unlink()
    return total
