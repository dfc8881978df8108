"""Every `appliance` command against every failure a person meets: one line on stderr, a documented exit code.

The commands come from the real argument parser, so a command added later is run here without anyone
remembering to list it; a required argument this file cannot fill makes the test fail and say so. Each command
runs as a real `python -m appliance` subprocess against real redis-servers:

- `down`: nothing listens on the port;
- `wrong_password`: a server with a password, given the wrong one;
- `noperm`: a real ACL user that may connect and PING but run nothing else;
- `oom`: `maxmemory 1` with `noeviction`, so every write is refused;
- `readonly`: a replica (of a primary that is not there), which refuses every write with READONLY;
- `bad_file`: a file argument (`--config`, `--payload @FILE`, `--plan-json`, `config check FILE`) whose bytes
  are not UTF-8.

All cases run at once (each one is mostly waiting), then each is checked as its own test.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from appliance.cli import build_parser
from appliance.commands import ExitCode
from appliance.localredis import LocalRedis, free_port

#: Commands that serve until stopped: under a failure they may exit (one line, no traceback) or ride it out.
SERVICES = {("worker",), ("machine",), ("monitor",), ("comfyui",), ("demo",), ("api",)}
#: Commands that never talk to Redis: the Redis failures do not apply to them.
NO_REDIS = {
    ("config", "show"),
    ("config", "check"),
    ("units", "install"),
    ("units", "list"),
    ("units", "uninstall"),
    ("units", "render"),
    ("comfyui",),
    ("pools", "classify"),
    ("machine", "plan"),
    ("machine", "record-stop"),
    ("machine", "target-down"),  # asks systemd to stop the target; never connects to Redis
    ("redis", "acl"),  # prints an ACL SETUSER line; never connects
    ("demo",),  # starts its own redis-server unless told otherwise
}
#: Commands that add data to Redis: `oom` and `readonly` must refuse them (reads, and deletes on a full Redis,
#: still work).
WRITES = {
    ("job", "submit"),
    ("fleet", "drain"),
    ("webhooks", "secret"),
    ("schedule", "add"),
    ("limits", "set"),
    ("limits", "rm"),  # writes the customer's settings back (fields dropped) and recounts its jobs
    ("queue", "pause"),
    ("api", "keys", "create"),
}
#: Commands that accept --config but never read it: a bad file there is not theirs to notice.
IGNORES_CONFIG = {("machine", "record-stop")}
#: How long a service may run before it is stopped (s); clients get CLIENT_TIMEOUT_S to exit on their own.
SERVICE_RUN_S = 6.0
CLIENT_TIMEOUT_S = 60.0

#: Values for required arguments, by their `dest`.
FILL = {
    "job_id": "no-such-job",
    "unit": "appliance-worker@echo0.service",
    "machine": "m-test",
    "service": "echo",
    "gpu": "0",
    "role": "submitter",
    "bin_path": "/usr/bin/appliance",
    "tenant": "t-test",
    "schedule_id": "nightly",
    "customer": "acme",
    "key_id": "no-such-key",
}

SCENARIOS = ("down", "wrong_password", "noperm", "oom", "readonly", "bad_file")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command path (one that has a handler), walking the parser's subcommands."""
    if path and parser.get_default("handler") is not None:
        yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def file_options(parser: argparse.ArgumentParser) -> list[str]:
    """The options of `parser` that name a file this test can make bad."""
    found = []
    for action in parser._actions:
        if action.dest in ("config", "config_path", "plan_json") and action.option_strings:
            found.append(action.option_strings[0])
    return found


ALL_COMMANDS = sorted(commands(build_parser()))


#: Flags whose code path differs enough to be run under every Redis failure too (one more case per scenario).
VARIANTS: dict[tuple[str, ...], list[tuple[str, ...]]] = {
    ("job", "submit"): [("--after", "no-such-job", "--after", "other-job", "--on-parent-failure", "cancel")],
}


@dataclass(frozen=True)
class Case:
    path: tuple[str, ...]
    scenario: str
    variant: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{' '.join((*self.path, *self.variant))}-{self.scenario}"


def cases() -> list[Case]:
    found = []
    for path in ALL_COMMANDS:
        for scenario in SCENARIOS:
            if scenario != "bad_file" and path in NO_REDIS:
                continue
            if scenario == "bad_file" and not (
                bad_file_arguments(path, Path("/x")) or path == ("config", "check")
            ):
                continue
            found.append(Case(path, scenario))
            if scenario != "bad_file":
                found += [Case(path, scenario, variant) for variant in VARIANTS.get(path, [])]
    return found


def bad_file_arguments(path: tuple[str, ...], bad: Path) -> list[str]:
    args = [arg for option in file_options(parser_of(path)) for arg in (option, str(bad))]
    if path == ("job", "submit"):
        args += ["--payload", f"@{bad}"]
    return args


@dataclass
class Servers:
    down_url: str
    acl: LocalRedis
    oom: LocalRedis
    replica: LocalRedis
    tmp: Path


@dataclass
class Outcome:
    returncode: int | None  # None: still running when stopped (a service riding the failure out)
    stdout: str
    stderr: str
    argv: list[str]


def build_argv(case: Case, tmp: Path) -> list[str]:
    parser = parser_of(case.path)
    argv = list(case.path)
    good_config = tmp / "good.toml"
    bad = tmp / "bad.toml"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        positional = not action.option_strings
        if not (positional or action.required):
            continue
        if action.dest == "file":
            value = str(bad if case.scenario == "bad_file" else good_config)
        elif action.dest in FILL:
            value = FILL[action.dest]
        else:
            pytest.fail(
                f"{' '.join(case.path)}: add a value for its required argument {action.dest!r} to FILL"
            )
        argv += [value] if positional else [action.option_strings[0], value]
    # Extra arguments some commands need to run here at all (never touch the real system).
    extra = {
        ("worker",): ["--slot", "echo0"],
        ("schedule", "add"): ["--every", "60"],
        ("limits", "set"): [
            "--weight",
            "2",
            "--max-in-flight",
            "2",
            "--pool",
            "gpu",
            "--rate",
            "5",
            "--burst",
            "2",
        ],
        ("machine",): ["--unmanaged", "--health-port", "0"],
        ("monitor",): ["--port", "0"],
        ("api",): ["--port", "0"],
        ("units", "install"): ["--root", str(tmp / "root"), "--bin", "/usr/bin/appliance", "--no-user"],
        ("units", "list"): ["--root", str(tmp / "root"), "--bin", "/usr/bin/appliance"],
        ("units", "uninstall"): ["--root", str(tmp / "root")],
        ("units", "render"): ["--dest", str(tmp / "rendered")],
        ("machine", "plan"): ["--gpus", "0"],
        ("demo",): ["--workers", "1", "--jobs", "1"],
    }
    argv += extra.get(case.path, [])
    argv += case.variant
    if case.scenario == "bad_file":
        argv += bad_file_arguments(case.path, bad)
    return argv


def environment(case: Case, servers: Servers) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_MACHINE__ID"] = "m-test"
    env["APPLIANCE_CONNECTORS__ECHO__ENABLED"] = "true"
    if case.scenario == "down" or case.scenario == "bad_file":
        env["APPLIANCE_REDIS__URL"] = servers.down_url
    elif case.scenario == "wrong_password":
        env["APPLIANCE_REDIS__URL"] = servers.acl.url
        env["APPLIANCE_REDIS__PASSWORD"] = "wrong"
    elif case.scenario == "noperm":
        env["APPLIANCE_REDIS__URL"] = servers.acl.url
        env["APPLIANCE_REDIS__USERNAME"] = "weak"
        env["APPLIANCE_REDIS__PASSWORD"] = "weak-secret"
    elif case.scenario == "oom":
        env["APPLIANCE_REDIS__URL"] = servers.oom.url
    elif case.scenario == "readonly":
        env["APPLIANCE_REDIS__URL"] = servers.replica.url
    if case.path == ("demo",):
        env["APPLIANCE_REDIS_URL"] = env.pop("APPLIANCE_REDIS__URL")
    return env


def run_case(case: Case, servers: Servers) -> Outcome:
    argv = [sys.executable, "-m", "appliance", *build_argv(case, servers.tmp)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment(case, servers),
        cwd=servers.tmp,
        start_new_session=True,
    )
    # A service given a bad file must exit on its own: it gets as long as a client command.
    limit = SERVICE_RUN_S if case.path in SERVICES and case.scenario != "bad_file" else CLIENT_TIMEOUT_S
    try:
        out, err = proc.communicate(timeout=limit)
        return Outcome(proc.returncode, out, err, argv)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return Outcome(None, out, err, argv)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[Case, Outcome]]:
    tmp = Path(tempfile.mkdtemp(prefix="appliance-cli-failures-"))
    (tmp / "good.toml").write_text("")
    executable = tmp / "root" / "usr" / "bin" / "appliance"  # what `units install --bin` must find
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (tmp / "bad.toml").write_bytes(b"\xff\xfe\x80 not utf-8 \xc3\x28\n")
    acl = LocalRedis(extra_args=["--requirepass", "right"]).start()
    oom = LocalRedis(extra_args=["--maxmemory", "1", "--maxmemory-policy", "noeviction"]).start()
    replica = LocalRedis(extra_args=["--replicaof", "127.0.0.1", str(free_port())]).start()
    try:
        admin = redis.Redis(port=acl.port, password="right")
        # May connect and PING, nothing else: every real command is refused with NOPERM.
        admin.acl_setuser(
            "weak", enabled=True, passwords=["+weak-secret"], commands=["-@all", "+@connection"]
        )
        admin.close()
        servers = Servers(f"redis://127.0.0.1:{free_port()}/0", acl, oom, replica, tmp)
        all_cases = cases()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(zip(all_cases, pool.map(lambda c: run_case(c, servers), all_cases), strict=True))
        yield results
    finally:
        acl.cleanup()
        oom.cleanup()
        replica.cleanup()


def test_every_command_is_enumerated() -> None:
    """The walk finds the commands we know of (a guard against the walk silently finding nothing)."""
    assert {("job", "submit"), ("job", "wait"), ("worker",), ("machine",), ("config", "check")} <= set(
        ALL_COMMANDS
    )


#: What each Redis failure must say, and its exit code, for a command that talks to Redis.
EXPECTED = {
    "down": ("cannot reach Redis", ExitCode.REDIS),
    "wrong_password": ("refused the credentials", ExitCode.REDIS),
    "noperm": ("NOPERM", ExitCode.REDIS),
    "oom": ("out of memory", ExitCode.REDIS),
    "readonly": ("read-only replica", ExitCode.REDIS),
    "bad_file": ("UTF-8", ExitCode.USAGE),
}
#: A service that cannot start as configured exits EX_CONFIG (its units' RestartPreventExitStatus=); one-shot
#: commands call a bad file bad input.
CONFIG_SERVICES = {("worker",), ("machine",), ("monitor",), ("comfyui",), ("api",)}


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.id)
def test_failure_is_one_line(case: Case, outcomes: dict[Case, Outcome]) -> None:
    got = outcomes[case]
    shown = f"{' '.join(got.argv[3:])}\nexit {got.returncode}\nstderr:\n{got.stderr}\nstdout:\n{got.stdout[-2000:]}"
    assert "Traceback" not in got.stderr, shown
    if got.returncode is None:  # a service still running: riding the failure out is allowed, crashing is not
        assert case.path in SERVICES, shown
        assert case.scenario != "bad_file", shown
        return
    needle, code = EXPECTED[case.scenario]
    if case.scenario == "bad_file" and case.path in CONFIG_SERVICES:
        code = ExitCode.CONFIG
    lines = got.stderr.strip().splitlines()
    if case.path in SERVICES:  # services log as they start; the error is the last line
        assert got.returncode != 0, shown
        assert lines and lines[-1].startswith("appliance: error: "), shown
        if case.scenario == "bad_file":
            assert got.returncode == code and needle in lines[-1], shown
        return
    if (
        case.scenario in ("oom", "readonly")
        and case.path not in WRITES
        and got.returncode in (ExitCode.OK, ExitCode.NOT_FOUND)
    ):
        return  # reads still work on a full Redis
    if case.variant and case.scenario in ("oom", "readonly") and got.returncode == ExitCode.USAGE:
        # submit.lua checks the parents before its first write: a full or read-only Redis still names the
        # missing one (nothing was written).
        assert len(lines) == 1 and "after: job 'no-such-job' not found" in lines[0], shown
        return
    if case.scenario == "bad_file" and case.path in IGNORES_CONFIG:
        assert len(lines) <= 1, shown
        return
    assert got.returncode != 0, shown
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), shown
    assert got.returncode == code, shown
    assert needle in lines[0], shown
    if case.scenario not in ("down", "bad_file"):  # it reached Redis: the line must not say it did not
        assert "cannot reach" not in lines[0], shown
    # redis-py's pipeline wrapper quotes the command's arguments (ids, payloads): not for a person's screen.
    assert "of pipeline caused error" not in lines[0], shown
