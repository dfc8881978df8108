"""The units under a real systemd 252 booted with systemd-nspawn: start, supervise, restart, fail, drain.

One rootfs (cached, see build-rootfs.sh) gets this checkout's wheel and `appliance units install` once per
module; each test boots it with --volatile=overlay, so what one test breaks the next never sees. The units
talk to a password-protected redis-server on a host loopback port (the container shares the host's network);
the password reaches them only as the `redis-password` credential from /etc/credstore.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from appliance.localredis import LocalRedis, free_port
from appliance.units.install import CONTAINER_EXIT_STATUS
from tests.systemd import harness

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

if reason := harness.skip_reason():
    pytest.skip(reason, allow_module_level=True)

TARGET = "appliance.target"
MACHINE = "appliance-machine.service"
ECHO = ["appliance-worker@echo0.service", "appliance-worker@echo1.service"]
_names = itertools.count()


def cli_available(group: str) -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", group, "--help"], capture_output=True, check=False
    )
    return proc.returncode == 0


needs_worker = pytest.mark.skipif(not cli_available("worker"), reason="`appliance worker` not built yet")
needs_machine = pytest.mark.skipif(not cli_available("machine"), reason="`appliance machine` not built yet")


@dataclass
class Env:
    tree: Path
    logs: Path
    redis: LocalRedis
    password: str
    machine_id: str
    health_port: int

    def boot(self, *extra: str) -> AbstractContextManager[harness.Container]:
        name = f"appl-{os.getpid()}-{next(_names)}"
        return harness.booted(self.tree, name, self.logs, extra_args=extra)

    async def queue(self):  # noqa: ANN201 - appliance.queue is imported lazily, as the CLI does
        from appliance.queue import Queue

        return await Queue.connect(self.redis.url, password=self.password)


CONFIG = """\
[redis]
url = "{url}"

[machine]
id = "{machine_id}"
type = "api"
status_interval_s = 1

[health]
host = "127.0.0.1"
port = {health_port}

[worker]
drain_grace_s = 20

[connectors.echo]
enabled = true
slots = 2
"""


SMOKE = """
import asyncio, sys
from appliance.queue import Queue
async def main():
    q = await Queue.connect(sys.argv[1], password=open("/run/smoke/redis-password").read())
    await q.stats()
    await q.close()
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    rootfs = harness.build_rootfs()
    work = tmp_path_factory.mktemp("nspawn")
    server = LocalRedis().start()
    password = secrets.token_hex(16)
    # Set after start: LocalRedis's readiness probe is an unauthenticated PING.
    redis.Redis(port=server.port).config_set("requirepass", password)
    try:
        wheel = harness.build_wheel(work / "wheel")
        tree = harness.prepare_tree(rootfs, work / "tree", wheel)
        machine_id = f"nspawn{os.getpid()}"
        config = tree / "etc" / "appliance" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        health_port = free_port()
        config.write_text(CONFIG.format(url=server.url, machine_id=machine_id, health_port=health_port))
        harness.write_credential(tree, "redis-password", password)
        # Fail the module once, in seconds, if the installed wheel cannot even reach the queue (a file missing
        # from the package data, say) instead of every test waiting for units that never become ready.
        harness.nspawn_run(
            tree,
            str(harness.VENV / "bin" / "python"),
            "-c",
            SMOKE,
            server.url,
            binds=[(tree / "etc" / "credstore", "/run/smoke")],
        )
        # The plan comes from the installed package inside the rootfs, as on a real host.
        plan = harness.nspawn_run(
            tree,
            "/usr/bin/env",
            "APPLIANCE_CONFIG=/etc/appliance/config.toml",
            str(harness.APPLIANCE_BIN),
            "machine",
            "plan",
            "--json",
        )
        harness.install_units(tree, json.loads(plan), "--config", "/etc/appliance/config.toml")
        logs = work / "logs"
        logs.mkdir()
        yield Env(
            tree=tree,
            logs=logs,
            redis=server,
            password=password,
            machine_id=machine_id,
            health_port=health_port,
        )
    finally:
        server.cleanup()


@pytest.fixture
def fresh(env: Env) -> Env:
    redis.Redis(port=env.redis.port, password=env.password).flushall()
    return env


def dropin(c: harness.Container, unit: str, text: str, name: str = "90-test.conf") -> None:
    c.sh("mkdir", "-p", f"/etc/systemd/system/{unit}.d")
    c.sh("sh", "-c", f"cat > /etc/systemd/system/{unit}.d/{name}", input=text)
    c.systemctl("daemon-reload")


def test_plan_installed_the_echo_slots(env: Env) -> None:
    wants = sorted(p.name for p in (env.tree / "etc/systemd/system/appliance.target.wants").iterdir())
    assert wants == ECHO


@needs_machine
def test_machine_unit_starts_with_credential_and_sandbox(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", MACHINE)
        props = c.wait_active(MACHINE)
        assert props["StatusText"], "the supervisor reports a STATUS= line"
        # It reached the password-protected Redis: the credential arrived, and only as a file.
        c.wait_props(MACHINE, "registered", lambda _: bool(_registered(fresh)), ["Id"], timeout=60)
        env_block = c.systemctl("show", MACHINE, "--property=Environment").stdout
        assert fresh.password not in env_block
        score = c.sh("systemd-analyze", "security", MACHINE, check=False).stdout
        assert float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", score)[1]) <= 3.0, score


def _hang_until_the_watchdog_restarts(c: harness.Container, unit: str) -> None:
    """SIGUSR2 hangs the unit's event loop (the APPLIANCE_TEST_HOOKS hook): systemd's watchdog must kill it and
    Restart= bring it back once, and the journal must say it was the watchdog."""
    c.kill_main(unit, "USR2")
    c.wait_props(
        unit,
        "restarted",
        lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active",
        ["NRestarts", "ActiveState"],
    )
    journal = c.journal(unit)
    assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal, journal


def _metrics(env: Env) -> str:
    """The supervisor's /metrics (it shares the host network), or '' while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.health_port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def _registered(env: Env) -> list[bytes]:
    client = redis.Redis(port=env.redis.port, password=env.password)
    return [k for k in client.scan_iter(count=1000) if env.machine_id.encode() in k]


@needs_worker
@needs_machine
def test_target_starts_every_unit_with_status(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in [MACHINE, *ECHO]:
            props = c.wait_active(unit)
            assert props["StatusText"], f"{unit} sends STATUS="
        status = c.systemctl("status", "appliance*", check=False).stdout
        for unit in [MACHINE, *ECHO]:
            assert unit in status
        score = c.sh("systemd-analyze", "security", ECHO[0], check=False).stdout
        assert float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", score)[1]) <= 3.0, score


async def _submit(env: Env, payload: dict) -> str:
    from appliance.queue import JobSpec

    q = await env.queue()
    try:
        return (await q.submit(JobSpec(service="echo", payload=payload))).id
    finally:
        await q.close()


async def _get(env: Env, job_id: str):  # noqa: ANN202
    q = await env.queue()
    try:
        return await q.get(job_id)
    finally:
        await q.close()


async def _worker_statuses(env: Env) -> dict[str, dict]:
    """slot -> the worker's own status record, as it wrote it into the queue."""
    q = await env.queue()
    try:
        records = [json.loads(raw) for raw in (await q.client.hgetall(q.keys.worker_status)).values()]
    finally:
        await q.close()
    return {r["slot"]: r for r in records}


def job(env: Env, job_id: str):  # noqa: ANN201
    return asyncio.run(_get(env, job_id))


def wait_job(c: harness.Container, env: Env, job_id: str, what: str, predicate, timeout: float = 90):  # noqa: ANN001,ANN201
    return harness.wait_for(
        f"job {job_id} {what}",
        lambda: (j := job(env, job_id)) and predicate(j) and j,
        timeout,
        interval=0.3,
        on_timeout=c.diagnostics,
    )


def unit_of(env: Env, worker_id: str) -> str:
    return f"appliance-worker@{worker_id.removeprefix(env.machine_id + '-')}.service"


@needs_worker
@needs_machine
def test_job_submitted_on_the_host_completes_through_the_units(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in ECHO:
            c.wait_active(unit)
        job_id = asyncio.run(_submit(fresh, {"text": "through systemd"}))
        done = wait_job(c, fresh, job_id, "completed", lambda j: j.status == "completed")
        assert done.worker_id.startswith(fresh.machine_id + "-")


@needs_worker
@needs_machine
def test_killed_worker_is_restarted_and_its_job_runs_again(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in ECHO:
            c.wait_active(unit)
        job_id = asyncio.run(_submit(fresh, {"delay": 4}))
        claimed = wait_job(
            c, fresh, job_id, "claimed", lambda j: j.worker_id and j.status in ("claimed", "running")
        )
        unit = unit_of(fresh, claimed.worker_id)
        c.kill_main(unit, "KILL")
        props = c.wait_props(
            unit,
            "restarted",
            lambda p: p["ActiveState"] == "active" and p["NRestarts"] == "1",
            ["ActiveState", "NRestarts"],
        )
        assert props["NRestarts"] == "1"
        done = wait_job(c, fresh, job_id, "completed after the restart", lambda j: j.status == "completed")
        assert done.attempts >= 2
        # The supervisor says so in its own log: what went down, and that it is back.
        c.wait_props(
            MACHINE,
            "logged the restart",
            lambda _: f"{unit} restarted by systemd" in c.journal(MACHINE),
            ["Id"],
            timeout=30,
        )


@needs_worker
@needs_machine
def test_hung_worker_is_killed_by_the_watchdog_and_restarted(fresh: Env) -> None:
    with fresh.boot() as c:
        unit = ECHO[0]
        # A short watchdog keeps the test quick; APPLIANCE_TEST_HOOKS arms the worker's SIGUSR2 "hang" hook.
        dropin(
            c, "appliance-worker@.service", "[Service]\nWatchdogSec=4s\nEnvironment=APPLIANCE_TEST_HOOKS=1\n"
        )
        c.systemctl("start", "--no-block", TARGET)
        c.wait_active(unit)
        _hang_until_the_watchdog_restarts(c, unit)
        # Result= is reset by the restart; ExecStopPost= counted the kill where the supervisor's metrics read it.
        # At least one: on a loaded machine the restarted worker may miss the 4 s watchdog again and be killed twice.
        series = (
            'appliance_service_watchdog_kills_total{kind="worker",service="'
            f'worker@{unit.split("@")[1].removesuffix(".service")}",unit="{unit}"}} '
        )
        c.wait_props(
            MACHINE,
            "counted",
            lambda _: any(
                line.startswith(series) and float(line[len(series) :]) >= 1
                for line in _metrics(fresh).splitlines()
            ),
            ["Id"],
            timeout=60,
        )


@needs_worker
@needs_machine
def test_worker_failing_past_its_start_limit_hands_its_jobs_back(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in ECHO:
            c.wait_active(unit)
        job_id = asyncio.run(_submit(fresh, {"delay": 30}))
        claimed = wait_job(
            c, fresh, job_id, "claimed", lambda j: j.worker_id and j.status in ("claimed", "running")
        )
        unit = unit_of(fresh, claimed.worker_id)
        # From now on this worker cannot start: it crashes through its start limit.
        dropin(c, unit, "[Service]\nExecStartPre=/bin/false\nRestartSec=100ms\n")
        c.kill_main(unit, "KILL")
        c.wait_props(
            unit, "failed for good", lambda p: p["ActiveState"] == "failed", ["ActiveState", "Result"]
        )
        handler = f"appliance-onfailure@{unit.removesuffix('.service')}.service"
        props = c.wait_props(
            handler,
            "run",
            lambda p: p["ActiveState"] == "inactive" and p["Result"] != "",
            ["ActiveState", "Result", "ExecMainStatus"],
        )
        assert props["Result"] == "success", c.journal(handler)
        done = wait_job(c, fresh, job_id, "completed by the other worker", lambda j: j.status == "completed")
        assert done.worker_id != claimed.worker_id
        assert any("service_failed" in json.dumps(e) for e in done.errors), done.errors


@needs_worker
@needs_machine
def test_stopping_the_target_drains_running_jobs(fresh: Env) -> None:
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in ECHO:
            c.wait_active(unit)
        job_id = asyncio.run(_submit(fresh, {"delay": 8}))
        wait_job(c, fresh, job_id, "running", lambda j: j.status in ("claimed", "running"))
        # The target stops first (it is ordered after its members), so this returns before they are down.
        c.systemctl("stop", TARGET)
        # The workers stop before the supervisor (ordered after it); meanwhile it reads as a planned stop.
        c.wait_props(
            MACHINE,
            "reads as a planned stop",
            lambda p: p["StatusText"] == "stopping: draining 1 job",
            ["StatusText"],
            timeout=30,
        )
        for unit in [MACHINE, *ECHO]:
            props = c.wait_props(
                unit,
                "stopped",
                lambda p: p["ActiveState"] in ("inactive", "failed"),
                ["ActiveState", "Result"],
                timeout=120,
            )
            assert props == {"ActiveState": "inactive", "Result": "success"}, (unit, props, c.journal(unit))
        assert job(fresh, job_id).status == "completed"


@needs_machine
def test_container_mode_exits_when_the_machine_fails_for_good(fresh: Env) -> None:
    with fresh.boot() as c:
        # The installer inside the container, as an image build would run it.
        c.sh(
            str(harness.APPLIANCE_BIN),
            "units",
            "install",
            "--bin",
            str(harness.APPLIANCE_BIN),
            "--plan-json",
            "/root/plan.json",
            "--config",
            "/etc/appliance/config.toml",
            "--container-mode",
        )
        dropin(c, MACHINE, "[Service]\nExecStartPre=/bin/false\nRestartSec=100ms\n")
        c.systemctl("start", "--no-block", MACHINE)
        assert c.process is not None
        rc = c.process.wait(timeout=120)
        assert rc == CONTAINER_EXIT_STATUS, c.console()
        assert "Exiting container" in c.console() or "exit.target" in c.console()


GPU_CONFIG = """\
[redis]
url = "{url}"

[machine]
id = "{machine_id}"
type = "gpu"
gpu_cpu_mode = true
status_interval_s = 1

[health]
host = "127.0.0.1"
port = {health_port}

[comfyui]
# The protocol-faithful stand-in, started by the real wrapper exactly as it would start ComfyUI.
command = ["{python}", "-m", "appliance.standins.comfyui"]
base_port = {comfy_port}
"""

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nspawn"}},
}


@needs_worker
@needs_machine
def test_gpu_slot_runs_comfyui_and_its_worker_follows_it(fresh: Env) -> None:
    comfy, worker = "appliance-comfyui@0.service", "appliance-worker@gpu0.service"
    with fresh.boot() as c:
        config = GPU_CONFIG.format(
            url=fresh.redis.url,
            machine_id=fresh.machine_id,
            health_port=fresh.health_port,
            python=harness.VENV / "bin" / "python",
            comfy_port=free_port(),
        )
        c.sh("sh", "-c", "cat > /etc/appliance/config.toml", input=config)
        # Re-plan this container as a GPU machine (CPU mode: one ComfyUI), as `units install` does on a host.
        c.sh(
            "env",
            "APPLIANCE_CONFIG=/etc/appliance/config.toml",
            str(harness.APPLIANCE_BIN),
            "units",
            "install",
            "--root",
            "/",
            "--bin",
            str(harness.APPLIANCE_BIN),
            "--from-machine-plan",
            "--config",
            "/etc/appliance/config.toml",
        )
        c.systemctl("daemon-reload")
        wants = c.sh("ls", "/etc/systemd/system/appliance.target.wants").stdout.split()
        assert comfy in wants and worker in wants and not [w for w in wants if "echo" in w], wants
        c.systemctl("start", "--no-block", TARGET)
        c.wait_active(comfy)
        c.wait_active(worker)
        assert c.show(comfy, "StatusText")["StatusText"], "the wrapper reports a STATUS= line"
        job_id = asyncio.run(_submit_comfy(fresh))
        done = wait_job(c, fresh, job_id, "completed", lambda j: j.status == "completed", timeout=120)
        assert done.worker_id == f"{fresh.machine_id}-gpu0"
        outputs = done.result["outputs"]
        assert outputs and outputs[0]["content_type"] == "image/png" and outputs[0]["size"] > 0, outputs
        # BindsTo=: when its ComfyUI stops, the worker stops with it.
        c.systemctl("stop", comfy)
        c.wait_props(
            worker,
            "stopped with its ComfyUI",
            lambda p: p["ActiveState"] in ("inactive", "failed"),
            ["ActiveState"],
        )


async def _submit_comfy(env: Env) -> str:
    from appliance.queue import JobSpec

    q = await env.queue()
    try:
        return (await q.submit(JobSpec(service="comfyui", payload={"workflow": WORKFLOW}))).id
    finally:
        await q.close()


#: How long the outage test holds Redis: three times the units' WatchdogSec=30s.
OUTAGE_S = 90


def _ready(env: Env) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.health_port}/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@needs_worker
@needs_machine
def test_a_redis_outage_restarts_nothing_and_every_job_completes_after_it(fresh: Env) -> None:
    """Redis stops answering (SIGSTOP: connections hang, nothing refuses) for three watchdog periods. That is a
    dependency outage, not a stuck process: no unit is restarted, the supervisor says so in STATUS=, and every
    job completes once Redis answers again."""
    units = [MACHINE, *ECHO]
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in units:
            c.wait_active(unit)
        harness.wait_for("/ready", lambda: _ready(fresh), 120, on_timeout=c.diagnostics)
        before = {u: c.show(u, "NRestarts")["NRestarts"] for u in units}
        jobs = [asyncio.run(_submit(fresh, {"delay": 2, "n": i})) for i in range(4)]
        wait_job(c, fresh, jobs[0], "running", lambda j: j.status in ("claimed", "running"))
        assert fresh.redis.process is not None
        fresh.redis.process.send_signal(signal.SIGSTOP)
        try:
            c.wait_props(
                MACHINE,
                "degraded",
                lambda p: "Redis unreachable" in p["StatusText"],
                ["StatusText"],
                timeout=60,
            )
            time.sleep(OUTAGE_S)  # the outage itself; nothing is asserted about its timing
            during = {u: c.show(u, "ActiveState", "NRestarts") for u in units}
        finally:
            fresh.redis.process.send_signal(signal.SIGCONT)
        for jid in jobs:
            wait_job(c, fresh, jid, "completed after the outage", lambda j: j.status == "completed", 180)
        after = {u: c.show(u, "ActiveState", "NRestarts") for u in units}
        for unit in units:
            assert during[unit] == {"ActiveState": "active", "NRestarts": before[unit]}, (unit, during)
            assert after[unit] == {"ActiveState": "active", "NRestarts": before[unit]}, (unit, after)
        journal = c.journal(lines=2000)
        assert "Watchdog timeout" not in journal, journal
        c.wait_props(MACHINE, "ready again", lambda p: p["StatusText"].startswith("ready:"), ["StatusText"])


@needs_machine
def test_hung_supervisor_is_killed_by_the_watchdog_and_restarted(fresh: Env) -> None:
    with fresh.boot() as c:
        # A short watchdog keeps the test quick; APPLIANCE_TEST_HOOKS arms the SIGUSR2 "hang" hook.
        dropin(c, MACHINE, "[Service]\nWatchdogSec=4s\nEnvironment=APPLIANCE_TEST_HOOKS=1\n")
        c.systemctl("start", "--no-block", MACHINE)
        c.wait_active(MACHINE)
        _hang_until_the_watchdog_restarts(c, MACHINE)


@needs_worker
@needs_machine
def test_ready_means_every_service_active_and_answering(fresh: Env) -> None:
    """/ready turns 200 only once every planned unit is active and its worker's connector answers;
    startup_complete says "ready", and a clean start logs nothing about being degraded."""
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        harness.wait_for("/ready", lambda: _ready(fresh), 120, interval=0.1, on_timeout=c.diagnostics)
        for unit in ECHO:  # read right after the first 200: they were up before it, not after
            assert c.show(unit, "ActiveState")["ActiveState"] == "active", c.diagnostics(unit)
        workers = asyncio.run(_worker_statuses(fresh))
        assert sorted(workers) == ["echo0", "echo1"], workers
        assert all(w["service_healthy"] for w in workers.values()), workers
        client = redis.Redis(port=fresh.redis.port, password=fresh.password, decode_responses=True)
        events = [json.loads(e) for e in client.lrange(f"machine:{{{fresh.machine_id}}}:events", 0, -1)]
        complete = [e for e in events if e["event_type"] == "startup_complete"]
        assert [e["phase"] for e in complete] == ["ready"], events
        assert c.show(MACHINE, "StatusText")["StatusText"].startswith("ready: 2/2 services active")
        doc = c.show(MACHINE, "Documentation")["Documentation"].removeprefix("file:")
        assert c.sh("test", "-s", doc, check=False).returncode == 0, f"Documentation= names {doc}: missing"
        journal = c.journal(MACHINE)
        assert "degraded" not in journal and "ready after" in journal, journal
        assert "event startup_step" not in journal and "no GPUs" not in journal, journal  # noise an api box


@needs_worker
@needs_machine
def test_a_config_error_fails_at_once_shows_its_cause_and_takes_the_target_down(fresh: Env) -> None:
    """A configuration the supervisor cannot run with: exit 78, no restart loop (RestartPreventExitStatus=),
    the cause in `systemctl status` (STATUS=), and appliance.target no longer "active" — its workers keep
    serving."""
    with fresh.boot() as c:
        c.systemctl("start", "--no-block", TARGET)
        for unit in [MACHINE, *ECHO]:
            c.wait_active(unit)
        dropin(c, MACHINE, "[Service]\nEnvironment=APPLIANCE_MACHINE__STATUS_INTERVAL_S=-1\n")
        c.systemctl("restart", "--no-block", MACHINE)
        props = c.wait_props(
            MACHINE,
            "failed",
            lambda p: p["ActiveState"] == "failed",
            ["ActiveState", "Result", "ExecMainStatus", "NRestarts", "StatusText"],
        )
        assert props["ExecMainStatus"] == "78" and props["NRestarts"] == "0", props
        assert props["StatusText"].startswith("config error: machine.status_interval_s"), props
        c.wait_props(TARGET, "down", lambda p: p["ActiveState"] == "inactive", ["ActiveState"])
        for unit in ECHO:
            assert c.show(unit, "ActiveState")["ActiveState"] == "active", c.diagnostics(unit)
        status = c.systemctl("status", MACHINE, check=False).stdout
        assert "config error: machine.status_interval_s" in status, status
        # Filed at priority err (the `<3>` prefix), so `journalctl -p err` finds it; and no prefix shows.
        errors = c.sh("journalctl", "--no-pager", "-p", "err", "-u", MACHINE, "-o", "cat", check=False).stdout
        assert "appliance: error: machine.status_interval_s" in errors, errors
        assert "<3>" not in errors, errors
