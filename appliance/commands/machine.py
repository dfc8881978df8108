"""`appliance machine`: the supervisor (default), its service plan, its failure handler and its status."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.commands import CommandError, ConfigCommandError, ExitCode, command_help, print_json, run_async
from appliance.commands.connection import redis_failure


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "machine",
        help=command_help("machine"),
        description="Without a subcommand: run the supervisor in the foreground (Type=notify under systemd).",
    )
    _add_config(parser, argparse.SUPPRESS)
    parser.add_argument("--health-host", help="bind address of the health server (default: health.host)")
    parser.add_argument(
        "--health-port", type=int, help="port of the health server (default: health.port; 0: any)"
    )
    parser.add_argument(
        "--unmanaged", action="store_true", help="do not read unit states from systemd even if it runs here"
    )
    parser.set_defaults(handler=_run, long_running=True)
    sub = parser.add_subparsers(dest="machine_command", metavar="SUBCOMMAND")

    plan = sub.add_parser("plan", help="print the service plan of this machine")
    _add_config(plan)
    plan.add_argument(
        "--json", action="store_true", help="print the plan as JSON (for `appliance units install`)"
    )
    plan.add_argument("--gpus", type=int, metavar="N", help="plan for N GPUs instead of asking NVML")
    plan.set_defaults(handler=_plan, long_running=False)

    onfail = sub.add_parser(
        "on-failure",
        help="hand back a failed unit's jobs and publish service_failed "
        "(run by appliance-onfailure@.service)",
    )
    _add_config(onfail)
    onfail.add_argument("unit", metavar="UNIT", help="the failed unit, e.g. appliance-worker@gpu0.service")
    onfail.set_defaults(handler=_on_failure, long_running=False)

    down = sub.add_parser(
        "target-down",
        help="stop appliance.target alone, its workers keep running "
        "(run by appliance-target-down.service when the supervisor failed for good)",
    )
    down.set_defaults(handler=_target_down)

    stop = sub.add_parser(
        "record-stop", help="count why a unit stopped ($SERVICE_RESULT; run by ExecStopPost=)"
    )
    _add_config(stop)
    stop.add_argument(
        "unit", metavar="UNIT", help="the unit that stopped, e.g. appliance-worker@gpu0.service"
    )
    stop.set_defaults(handler=_record_stop, long_running=False)

    status = sub.add_parser("status", help="print a machine's last published status from Redis")
    _add_config(status)
    status.add_argument("--machine", metavar="ID", help="machine id (default: machine.id of this host)")
    status.add_argument("--json", action="store_true", help="print the whole status payload as JSON")
    status.set_defaults(handler=_status, long_running=False)


def _add_config(parser: argparse.ArgumentParser, default: Any = None) -> None:
    # SUPPRESS on the parent: a subcommand's own default must not overwrite a --config given before it.
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="config file (TOML, YAML or JSON; default: $APPLIANCE_CONFIG)",
    )


def load(args: argparse.Namespace) -> Any:
    """The settings, or one line: exit 78 (EX_CONFIG, the units' RestartPreventExitStatus=) for a service that
    cannot start as configured, 2 for a one-shot command."""
    from appliance.config import ConfigError, load_settings
    from appliance.secrets import SecretError

    error = ConfigCommandError if getattr(args, "long_running", False) else CommandError
    try:
        return load_settings(getattr(args, "config", None)).settings
    except ConfigError as exc:
        raise error("; ".join(exc.errors)) from None
    except SecretError as exc:
        raise error(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from appliance.machine.supervisor import Supervisor
    from appliance.secrets import SecretError

    settings = load(args)
    try:
        supervisor = Supervisor(
            settings,
            supervision="unmanaged" if args.unmanaged else None,
            health_host=args.health_host,
            health_port=args.health_port,
            config_path=getattr(args, "config", None),
        )
    except SecretError as exc:
        raise ConfigCommandError(str(exc)) from None
    try:
        return run_async(supervisor.run())
    except OSError as exc:  # the health port is taken, typically
        raise CommandError(f"machine supervisor: {exc}", ExitCode.FAILED) from None


def _plan(args: argparse.Namespace) -> int:
    from appliance.machine.plan import PlanError, plan_from_settings
    from appliance.machine.resources import Nvml

    settings = load(args)
    if args.gpus is not None:
        if args.gpus < 0:
            raise CommandError("--gpus must be 0 or more")
        gpus = args.gpus
    else:
        nvml = Nvml().start()
        gpus = len(nvml.gpus())
        nvml.stop()
    try:
        plan = plan_from_settings(settings, gpus)
    except PlanError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(plan.to_dict())
        return 0
    print(f"machine {plan.machine_id} ({plan.machine_type.value}): {len(plan.services)} services")
    for svc in plan.services:
        extra = " ".join(f"{k}={v}" for k, v in svc.to_dict().items() if k not in ("name", "unit", "kind"))
        print(f"  {svc.unit:<40} {svc.kind:<8} {extra}")
    return 0


def _on_failure(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from appliance.machine.onfailure import handle_failure
    from appliance.machine.plan import PlanError

    settings = load(args)
    try:
        event = run_async(handle_failure(settings, args.unit))
    except PlanError as exc:
        raise CommandError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise redis_failure(exc) from None
    returned = sum(event["jobs_returned"].values())
    print(f"{event['unit']}: {returned} job(s) returned to the queue; service_failed published")
    return 0


def _record_stop(args: argparse.Namespace) -> int:
    import os

    from appliance.machine.stops import StopRecordError, record_stop, state_directory

    state_dir = state_directory(os.environ)
    if state_dir is None:
        raise CommandError("record-stop runs from a unit's ExecStopPost= and needs $STATE_DIRECTORY")
    try:
        record_stop(state_dir, args.unit, os.environ.get("SERVICE_RESULT") or "unknown")
    except (StopRecordError, OSError) as exc:
        raise CommandError(f"cannot record the stop of {args.unit}: {exc}") from None
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from redis.exceptions import RedisError

    from appliance.queue import registry as keys
    from appliance.queue.redisclient import client_for

    settings = load(args)
    machine_id = args.machine or settings.machine.id
    conn = settings.redis_connection()

    async def fetch() -> str | None:
        client = client_for(conn)
        try:
            raw = await client.get(keys.status_key(machine_id))
            return raw.decode() if isinstance(raw, bytes) else raw
        finally:
            await client.aclose()

    try:
        raw = run_async(fetch())
    except (RedisError, OSError) as exc:
        raise redis_failure(exc, conn.url) from None
    if raw is None:
        raise CommandError(
            f"machine {machine_id!r} has no current status (not running, or its registration expired)", 3
        )
    status = json.loads(raw)
    if args.json:
        print_json(status)
        return 0
    machine = status["status"]["machine"]
    print(
        f"{status['machine_id']} ({status['machine_type']}, {status['supervision']}): {machine['phase']}, "
        f"up {machine['uptime_ms'] // 1000}s, healthy={status['healthy']}"
    )
    for name, svc in status["status"]["services"].items():
        print(f"  {name:<16} {svc['active_state']:<10} restarts={svc['restarts']}")
    for wid, w in status["status"]["workers"].items():
        print(f"  {wid:<24} {w.get('status')} job={w.get('current_job_id')} progress={w.get('progress')}")
    return 0


def _target_down(args: argparse.Namespace) -> int:
    import subprocess

    argv = ["systemctl", "--no-block", "--job-mode=ignore-dependencies", "stop", "appliance.target"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"systemctl: {exc}", 1) from None
    if proc.returncode != 0:
        raise CommandError(f"stopping appliance.target failed: {proc.stderr.strip()}", 1)
    print(
        "appliance-machine.service failed for good: appliance.target stopped, its workers keep running; "
        "the cause: systemctl status appliance-machine.service"
    )
    return 0
