"""Tenant isolation with real Redis ACL users: each role does its job, and no tenant reaches another queue.

The users are made by applying what `appliance redis acl` prints to a real redis-server through redis-cli, as an
operator would; every attack below is what a tenant holding its own submitter credentials could send.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from appliance.localredis import LocalRedis
from appliance.machine.registry import MachineRegistry
from appliance.queue import JobStatus, Queue, QueueSettings
from appliance.queue.scripts import ScriptLibraryError, ScriptSet

#: The multi-tenant configuration docs/security.md prescribes: EVALSHA (the default) and per-queue channels.
TENANT_ENV = {"APPLIANCE_QUEUE__CHANNELS": "queue"}
PASSWORD = "s3cret-for-tests"  # noqa: S105 - a throwaway password of a throwaway server


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    """A Redis of this module's own: ACL users outlive FLUSHALL, so they must not leak into the shared one."""
    redis_server = LocalRedis().start()
    yield redis_server
    redis_server.cleanup()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


def as_user(server: LocalRedis, user: str) -> dict[str, str]:
    """The environment a process of ACL user `user` runs with (password from a file, as in production)."""
    return {
        **TENANT_ENV,
        "APPLIANCE_REDIS_URL": server.url,
        "APPLIANCE_REDIS__USERNAME": user,
        "APPLIANCE_REDIS__PASSWORD": PASSWORD,
    }


def make_user(server: LocalRedis, tmp: Path, user: str, role: str, *extra: str) -> str:
    """Print the role's ACL SETUSER with `appliance redis acl` and apply it with redis-cli; returns the line."""
    secret = tmp / f"{user}.pw"
    secret.write_text(PASSWORD + "\n")
    printed = cli(
        "redis", "acl", "--role", role, "--user", user, "--password-file", str(secret), *extra, env=TENANT_ENV
    )
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    assert PASSWORD not in line  # only its SHA-256 is printed
    applied = subprocess.run(
        ["redis-cli", "-p", str(server.port)], input=line + "\n", capture_output=True, text=True, timeout=30
    )
    assert applied.stdout.strip() == "OK", (line, applied.stdout, applied.stderr)
    return line


@pytest.fixture
async def admin(server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    await client.flushall()
    await client.execute_command("FUNCTION", "FLUSH")
    await client.execute_command("ACL", "LOG", "RESET")
    await client.config_resetstat()
    yield client
    await client.aclose()


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "worker", "--slot", "echo0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def connect(server: LocalRedis, user: str | None, queue: str, **settings: object) -> Queue:
    creds = {"username": user, "password": PASSWORD} if user else {}
    return await Queue.connect(
        server.url, queue_name=queue, settings=QueueSettings(channels="queue", **settings), **creds
    )


async def refused(action: object) -> str:
    """Await `action`; it must be refused by the ACL. Returns Redis's words."""
    with pytest.raises(ResponseError) as caught:
        await action  # type: ignore[misc]
    text = str(caught.value)
    # NOPERM, or the same refusal met inside a script ("The user executing the script can't access ...").
    assert isinstance(caught.value, NoPermissionError) or "user executing the script can't" in text, text
    return text


# --- each role does its job ---------------------------------------------------------------------------------------


async def test_every_role_does_its_job_and_redis_refuses_nothing(
    server: LocalRedis, admin: aioredis.Redis, tmp_path: Path
) -> None:
    make_user(server, tmp_path, "deployer", "deployer")
    make_user(server, tmp_path, "sub-a", "submitter", "--queue", "a")
    make_user(server, tmp_path, "mach-a", "machine", "--queue", "a", "--machine", "m1")
    make_user(server, tmp_path, "mon-a", "monitor", "--queue", "a")
    setup = cli("redis", "setup", env=as_user(server, "deployer"))
    assert setup.returncode == 0, setup.stderr
    assert "loaded" in setup.stdout

    # The submitter submits on the command line and waits; a real worker process runs as the machine user.
    submitted = cli(
        "job",
        "submit",
        "--service",
        "echo",
        "--payload",
        '{"n": 1}',
        "--queue",
        "a",
        env=as_user(server, "sub-a"),
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    worker_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")},
        **as_user(server, "mach-a"),
        "APPLIANCE_REDIS__QUEUE": "a",
        "APPLIANCE_MACHINE__ID": "m1",
        "APPLIANCE_STORAGE__LOCAL_DIR": str(tmp_path / "out"),
        "APPLIANCE_WORKER__CLAIM_TIMEOUT_S": "1",
    }
    worker = start_worker(worker_env)
    try:
        waited = await asyncio.to_thread(
            cli,
            "job",
            "wait",
            job_id,
            "--json",
            "--timeout",
            "60",
            "--queue",
            "a",
            env=as_user(server, "sub-a"),
        )
        assert waited.returncode == 0, waited.stderr
        assert json.loads(waited.stdout)["result"]["echo"] == {"n": 1}
    finally:
        worker.terminate()
        log = (await asyncio.to_thread(worker.communicate, timeout=60))[0]
    assert worker.returncode == 0, log

    # The machine user runs every other transition through the Python API.
    machine = await connect(server, "mach-a", "a", lease_ms=1000, retry_base_ms=0, retry_max_ms=0)
    submitter = await connect(server, "sub-a", "a")
    try:
        jobs = [await submitter.submit({"service": "echo"}) for _ in range(4)]
        claimed = await machine.claim("m1-x", [jobs[0].shape])
        assert await machine.heartbeat("m1-x", {claimed.job.id: claimed.token}) == {claimed.job.id: "ok"}
        await machine.progress(claimed.job.id, claimed.token, 50, "half")
        assert await machine.fail(claimed.job.id, claimed.token, "x", retryable=True) is JobStatus.PENDING
        again = await machine.claim("m1-x", [jobs[0].shape])
        await machine.release(again.job.id, again.token)
        assert await submitter.cancel(jobs[3].id) == "cancelled"
        await machine.claim("m1-x", [jobs[0].shape])
        await asyncio.sleep(1.1)
        assert (await machine.reap(force=True)).requeued == 1
        assert (await submitter.get(jobs[1].id)).status is JobStatus.PENDING
        assert len(await submitter.list_jobs()) >= 3
        assert (await submitter.stats()).waiting >= 2
        # Dependencies (a shape of their own): the submitter's child waits, the machine's completion releases it
        # and puts it in line, the submitter's cancel of another parent cancels that one's child.
        dep = {"service": "echo", "pool": "deps"}
        parent = await submitter.submit(dep)
        child = await submitter.submit({**dep, "after": [parent.id]})
        other = await submitter.submit(dep)
        doomed = await submitter.submit({**dep, "after": [other.id], "on_parent_failure": "cancel"})
        assert (child.status, (await submitter.stats()).blocked) == (JobStatus.BLOCKED, 2)
        claimed = await machine.claim("m1-x", [parent.shape])
        await machine.complete(parent.id, claimed.token, {"v": 1})
        assert await submitter.cancel(other.id) == "cancelled"
        assert (await submitter.get(doomed.id)).status is JobStatus.CANCELLED
        released = await machine.claim("m1-x", [parent.shape])
        assert released.job.id == child.id
        assert await machine.parent_results(released.job) == {parent.id: {"v": 1}}
        # Limits: the machine user sets them (and runs unlimit/limits_count), everyone reads why a job waits.
        await machine.limits.set("acme", max_in_flight=1)
        capped = await submitter.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(2)])
        while (await submitter.stats()).limited == 0:  # claims take what waits ahead, then hold acme's second
            assert await machine.claim("m1-x", [capped[0].shape]) is not None
        assert (await submitter.get(capped[1].id)).held_by == "customer acme at in-flight cap 1/1"
        assert (await submitter.stats()).limited_by == {"acme": "1 held: customer acme at in-flight cap 1/1"}
        # The supervisor's side: its machine's registration, status and events.
        registry = MachineRegistry(machine.client, "m1", ttl_s=60)
        await registry.clear_stale()
        await registry.register({"machine_type": "api", "capabilities": {"services": ["echo"]}})
        assert await registry.refresh("running")
        await registry.publish_event("startup_complete")
        await registry.publish_status({"machine_id": "m1", "phase": "running"})
        assert await machine.client.xread({machine.keys.events: "0-0"}, count=1)
        # ... and not another machine's.
        await refused(MachineRegistry(machine.client, "m2", ttl_s=60).register({"machine_type": "api"}))
    finally:
        await machine.close()
        await submitter.close()

    # The monitor reads the queue and the fleet and listens, and nothing else.
    monitor = await connect(server, "mon-a", "a")
    try:
        assert (await monitor.get(job_id)).status is JobStatus.COMPLETED
        assert (await monitor.stats()).totals["completed"] == 2  # the CLI's job and the parent above
        assert (await monitor.stats()).limited == 1
        assert (await monitor.limits.get("acme")).in_flight == 1
        assert await monitor.client.xrange(monitor.keys.events, count=5)
        assert await monitor.client.zrange("machines", 0, -1) == ["m1"]
        assert await monitor.client.hgetall("machine:{m1}:info") is not None
        pubsub = monitor.client.pubsub()
        await pubsub.subscribe(monitor.channel("complete_job"), "machine:startup:events")
        await pubsub.psubscribe("machine:status:*")
        await pubsub.aclose()
        await refused(monitor.submit({"service": "echo"}))
        await refused(monitor.client.hset(monitor.keys.state, job_id, "pending"))
    finally:
        await monitor.close()
    # Nothing the roles did for their jobs was refused: the only ACL LOG entries are the refusals asked for.
    log_entries = await admin.execute_command("ACL", "LOG")
    entries = [dict(zip(e[::2], e[1::2], strict=False)) if isinstance(e, list) else e for e in log_entries]
    # (redis-py's CLIENT SETINFO, which Redis 7.2+ knows, is refused and ignored: see appliance/queue/acl.py.)
    denied = [e for e in entries if e["object"] != "client|setinfo"]
    assert {(e["username"], e["object"]) for e in denied} == {
        ("mach-a", "machine:{m2}:info"),
        ("mon-a", "evalsha"),
        ("mon-a", "hset"),
    }, denied


async def test_the_roles_in_functions_mode_call_the_verified_library(
    server: LocalRedis, admin: aioredis.Redis, tmp_path: Path
) -> None:
    mode = ("--scripts", "functions")
    make_user(server, tmp_path, "deployer", "deployer")
    make_user(server, tmp_path, "sub-a", "submitter", "--queue", "a", *mode)
    make_user(server, tmp_path, "mach-a", "machine", "--queue", "a", "--machine", "m1", *mode)
    make_user(server, tmp_path, "mon-a", "monitor", "--queue", "a", *mode)
    assert cli("redis", "setup", env=as_user(server, "deployer")).returncode == 0
    submitter = await connect(server, "sub-a", "a", scripts="functions")
    machine = await connect(server, "mach-a", "a", scripts="functions")
    monitor = await connect(server, "mon-a", "a", scripts="functions")
    try:
        assert (
            submitter.scripts.use_functions
            and machine.scripts.use_functions
            and monitor.scripts.use_functions
        )
        jobs = await submitter.submit_many([{"service": "echo"} for _ in range(3)])
        _, claimed = await machine.finish_and_claim([], "m1-w", [jobs[0].shape], 2)
        codes, _ = await machine.finish_and_claim([(c.job.id, c.token, {}) for c in claimed], "m1-w", [], 0)
        assert codes == [1, 1]
        assert await submitter.cancel(jobs[2].id) == "cancelled"
        assert (await monitor.stats()).totals["completed"] == 2
        stats = await admin.info("commandstats")
        assert stats["cmdstat_fcall"]["calls"] >= 4 and "cmdstat_evalsha" not in stats
    finally:
        for queue in (submitter, machine, monitor):
            await queue.close()
    log_entries = await admin.execute_command("ACL", "LOG")
    entries = [dict(zip(e[::2], e[1::2], strict=False)) if isinstance(e, list) else e for e in log_entries]
    assert [e for e in entries if e["object"] != "client|setinfo"] == []


# --- a tenant cannot reach another queue ----------------------------------------------------------------------------


async def test_a_tenant_cannot_read_or_change_another_queue_by_any_path(
    server: LocalRedis, admin: aioredis.Redis, tmp_path: Path
) -> None:
    make_user(server, tmp_path, "sub-a", "submitter", "--queue", "a")
    victim = await connect(server, None, "b")
    job = await victim.submit({"service": "echo", "payload": {"secret": "of tenant b"}})
    before = {k: await admin.hgetall(k) for k in victim.keys.job_columns()}
    attacker = aioredis.Redis.from_url(server.url, username="sub-a", password=PASSWORD, decode_responses=True)
    b = victim.keys
    try:
        # Direct keys: read, overwrite, delete, take from the ready index.
        await refused(attacker.hgetall(b.spec))
        await refused(attacker.hget(b.spec, job.id))
        await refused(attacker.hset(b.state, job.id, "completed"))
        await refused(attacker.delete(b.spec))
        await refused(attacker.zpopmin(b.ready(job.shape)))
        await refused(attacker.xrange(b.events))
        # Walking or copying the keyspace: none of these is granted.
        await refused(attacker.scan(0))
        await refused(attacker.keys("*"))
        await refused(attacker.randomkey())
        await refused(attacker.execute_command("COPY", b.spec, "appliance:{a}:loot"))
        await refused(attacker.execute_command("MIGRATE", "127.0.0.1", "1", "", "0", "1000", "KEYS", b.spec))
        await refused(attacker.execute_command("MONITOR"))
        await refused(attacker.execute_command("CLIENT", "LIST"))
        await refused(attacker.execute_command("CONFIG", "SET", "appendonly", "no"))
        await refused(attacker.execute_command("ACL", "SETUSER", "sub-a", "~*"))
        # The Function library: its name is computable, but loading, replacing or flushing it is not granted.
        library = ScriptSet()
        evil = library.library_code().replace(
            "local rcall = redis.call", "local rcall = redis.call -- evil", 1
        )
        await refused(attacker.execute_command("FUNCTION", "LOAD", "REPLACE", evil))
        await refused(attacker.execute_command("FUNCTION", "LOAD", evil))
        await refused(attacker.execute_command("FUNCTION", "FLUSH"))
        await refused(attacker.execute_command("FUNCTION", "DELETE", library.library))
        await refused(attacker.execute_command("FUNCTION", "RESTORE", b"\x00"))
        await refused(attacker.fcall(library.function_name("claim"), 1, b.heads))
        # Scripts: EVAL is not granted; its own EVALSHA scripts run with its own rights, declared keys or not.
        await refused(attacker.eval("return redis.call('HGETALL', KEYS[1])", 1, b.spec))
        await refused(attacker.execute_command("SCRIPT", "FLUSH"))
        await refused(attacker.execute_command("SCRIPT", "KILL"))
        declared = await attacker.script_load("return redis.call('HGETALL', KEYS[1])")
        await refused(attacker.evalsha(declared, 1, b.spec))
        hidden = await attacker.script_load(f"return redis.call('HGETALL', '{b.spec}')")
        await refused(attacker.evalsha(hidden, 1, "appliance:{a}:spec"))
        # The queue's own scripts with the other queue's keys (a claim of b's jobs, a forged completion).
        thief = Queue(attacker, queue_name="b", settings=QueueSettings(channels="queue"))
        await refused(thief.claim("evil", [job.shape]))
        await refused(thief.complete(job.id, "guess", {"forged": True}))
        await refused(thief.cancel(job.id))
        await refused(thief.submit({"service": "echo"}))
        await refused(thief.get(job.id))
        # Pub/sub: the other queue's channels, every channel by pattern, the shared names, publishing.
        # (Sent as plain commands: redis-py's PubSub reports a refused SUBSCRIBE only on the next read.)
        await refused(attacker.execute_command("SUBSCRIBE", b.key("complete_job")))
        await refused(attacker.execute_command("SUBSCRIBE", "complete_job"))
        await refused(attacker.execute_command("PSUBSCRIBE", "*"))
        await refused(attacker.execute_command("PSUBSCRIBE", "appliance:*"))
        await refused(attacker.execute_command("SSUBSCRIBE", b.key("complete_job")))
        await refused(attacker.publish(b.cancel_channel, f"{job.id}|w"))
        await refused(attacker.publish(b.hub_channel("h1"), "w|x"))
        await refused(attacker.execute_command("PUBSUB", "CHANNELS"))
    finally:
        await attacker.aclose()
    # Tenant b's data is exactly as it was, and its job still runs.
    assert {k: await admin.hgetall(k) for k in victim.keys.job_columns()} == before
    assert not await admin.exists("appliance:{a}:loot")
    claimed = await victim.claim("w", [job.shape])
    assert claimed.job.payload == {"secret": "of tenant b"}
    await victim.close()


async def test_a_replaced_library_cannot_hijack_the_default_path(
    server: LocalRedis, admin: aioredis.Redis, tmp_path: Path
) -> None:
    # The old advice (`+@all -@admin -@dangerous`, keys of one queue) still allows FUNCTION LOAD: the hijack.
    await admin.execute_command(
        "ACL", "SETUSER", "old-a", "on", f">{PASSWORD}", "~appliance:{a}:*", "+@all", "-@admin", "-@dangerous"
    )
    old = aioredis.Redis.from_url(server.url, username="old-a", password=PASSWORD, decode_responses=True)
    library = ScriptSet()
    assert cli("redis", "setup", env={"APPLIANCE_REDIS_URL": server.url}).returncode == 0
    # Tenant b's client is up and working before the attack.
    victim = await connect(server, None, "b")
    assert victim.scripts.use_functions is False
    first = await victim.submit({"service": "echo"})
    # The injected line copies the claimed jobs' specs into a key the attacker can read.
    evil = library.library_code().replace(
        "local rcall = redis.call",
        "local rcall = redis.call\npcall(redis.call, 'SET', 'appliance:{a}:loot', tostring(KEYS[3]))",
    )
    assert await old.execute_command("FUNCTION", "LOAD", "REPLACE", evil) == library.library
    await old.aclose()
    # The default client (EVALSHA, content-addressed) runs its own code whatever the library now holds.
    claimed = await victim.claim("w", [first.shape])
    await victim.complete(first.id, claimed.token, {"ok": True})
    second = await victim.submit({"service": "echo"})
    assert (await victim.claim("w", [second.shape])).job.id == second.id
    assert not await admin.exists("appliance:{a}:loot")
    await victim.close()
    # A functions client checks the library's code first and refuses the tampered one.
    with pytest.raises(ScriptLibraryError, match="differs from this version's code"):
        await connect(server, None, "b", scripts="functions")
    # The deployer's setup refuses it too, and replaces it only when told to.
    env = {"APPLIANCE_REDIS_URL": server.url}
    kept = cli("redis", "setup", env=env)
    assert kept.returncode == 2 and len(kept.stderr.strip().splitlines()) == 1 and "--replace" in kept.stderr
    fixed = cli("redis", "setup", "--replace", env=env)
    assert fixed.returncode == 0 and "replaced" in fixed.stdout, fixed.stderr
    fresh = await connect(server, None, "b", scripts="functions")
    assert fresh.scripts.use_functions is True
    await fresh.close()


async def test_clients_never_load_the_library(server: LocalRedis, admin: aioredis.Redis) -> None:
    queue = await connect(server, None, "a", scripts="functions")
    # Not loaded by the deployer: the client uses EVALSHA instead of loading it itself.
    assert queue.scripts.use_functions is False
    job = await queue.submit({"service": "echo"})
    assert await admin.execute_command("FUNCTION", "LIST") == []
    assert (await queue.get(job.id)).status is JobStatus.PENDING
    await queue.close()
    # Loaded, then gone mid-run (a restart without persistence, FUNCTION FLUSH): single and pipelined calls
    # carry on through EVALSHA, and the library stays gone until the deployer loads it again.
    assert await ScriptSet().install(admin) == "loaded"
    queue = await connect(server, None, "a", scripts="functions")
    assert queue.scripts.use_functions is True
    await admin.execute_command("FUNCTION", "FLUSH")
    await admin.execute_command("SCRIPT", "FLUSH")
    jobs = await queue.submit_many([{"service": "echo"} for _ in range(3)])
    _, claimed = await queue.finish_and_claim([], "w", [jobs[0].shape], 2)
    assert queue.scripts.use_functions is False and len(claimed) == 2
    await admin.execute_command("SCRIPT", "FLUSH")
    codes, more = await queue.finish_and_claim(
        [(c.job.id, c.token, {}) for c in claimed], "w", [jobs[0].shape], 2
    )
    assert codes == [1, 1] and len(more) == 2
    assert await admin.execute_command("FUNCTION", "LIST") == []
    await queue.close()


# --- forbidden commands are one line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "role", "extra", "command", "named"),
    [
        (
            "mon-a",
            "monitor",
            ("--queue", "a"),
            ("job", "submit", "--service", "echo", "--queue", "a"),
            "evalsha",
        ),
        ("mon-a", "monitor", ("--queue", "a"), ("redis", "setup"), "function|list"),
        ("sub-a", "submitter", ("--queue", "a"), ("job", "get", "x", "--queue", "b"), "key"),
        ("sub-a", "submitter", ("--queue", "a"), ("redis", "setup"), "function|list"),
        ("mach-a", "machine", ("--queue", "a", "--machine", "m1"), ("redis", "setup"), "function|list"),
        ("mach-a", "machine", ("--queue", "a", "--machine", "m1"), ("job", "stats", "--queue", "b"), "key"),
        ("dep", "deployer", (), ("job", "get", "x", "--queue", "a"), "hget"),
    ],
)
def test_each_roles_forbidden_command_is_one_line_naming_the_permission(
    server: LocalRedis,
    tmp_path: Path,
    user: str,
    role: str,
    extra: tuple[str, ...],
    command: tuple[str, ...],
    named: str,
) -> None:
    make_user(server, tmp_path, user, role, *extra)
    out = cli(*command, env=as_user(server, user))
    assert out.returncode == 4, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "refused" in lines[0] and "permission" in lines[0] and named in lines[0].lower(), lines[0]
