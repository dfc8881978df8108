"""The HTTP load generator of bench/api.py: `wrk` (a C client; in real deployments the clients are other machines,
so the client's own CPU is not the product's), driven by a Lua script that POSTs one valid job with the bearer
token over N keep-alive connections. Its CPU time is taken from the kernel's accounting of the exited process
(wait4), so it can be reported apart from the API's and Redis's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: The request: a valid job; the token comes from the environment (never on wrk's command line).
SCRIPT = """\
wrk.method = "POST"
wrk.body = '{"service":"echo","payload":{"i":1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str, label: str) -> float:
    found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if found is None:
        raise SystemExit(f"wrk printed no {label} latency:\n{text}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def run(url: str, token: str, seconds: int, connections: int) -> WrkRun:
    """`wrk` POSTing jobs to `url` for `seconds` over `connections` keep-alive connections (one thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(SCRIPT)
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
        env = {**os.environ, "BENCH_TOKEN": token}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"some submits failed:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    if done is None:
        raise SystemExit(f"wrk printed no request count:\n{out}")
    return WrkRun(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS[done.group(3)] / 1000,
        p50_ms=_ms(out, "50%"),
        p99_ms=_ms(out, "99%"),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
