"""`appliance comfyui --gpu N`: run ComfyUI for GPU N under the wrapper (sd_notify READY/WATCHDOG, restarts)."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.commands import CommandError, ConfigCommandError, command_help, run_async


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("comfyui", help=command_help("comfyui"))
    parser.add_argument(
        "--gpu",
        type=int,
        required=True,
        metavar="N",
        help="GPU index: ComfyUI gets --cuda-device N and port comfyui.base_port + N",
    )
    parser.add_argument("--config", metavar="FILE", help="config file (default: $APPLIANCE_CONFIG)")
    parser.add_argument(
        "--hang-after",
        type=float,
        metavar="SECONDS",
        help="without a systemd watchdog: kill ComfyUI (and exit non-zero) after it stopped answering this long "
        "(default: 3 x comfyui.request_timeout_s); under WatchdogSec= systemd alone judges a hang",
    )
    parser.set_defaults(handler=_run, long_running=True)


def _run(args: argparse.Namespace) -> int:
    from appliance.commands.machine import load
    from appliance.machine.comfyui import ComfyWrapper, build_command, prepare_instance_dir

    if args.gpu < 0:
        raise CommandError(f"--gpu must be 0 or more, not {args.gpu}")
    if args.hang_after is not None and args.hang_after <= 0:
        raise CommandError("--hang-after must be more than 0 seconds")
    settings = load(args)
    command = build_command(settings, args.gpu)
    if command.port > 65535:
        raise ConfigCommandError(f"port {command.port} (comfyui.base_port + {args.gpu}) is beyond 65535")
    if command.cwd is not None and not command.cwd.is_dir():
        raise ConfigCommandError(f"comfyui.workdir {command.cwd} is not a directory")
    try:
        prepare_instance_dir(command)
    except OSError as exc:
        raise CommandError(f"ComfyUI directory {command.base_dir}: {exc}") from None
    c = settings.comfyui
    wrapper = ComfyWrapper(
        command,
        startup_timeout_s=c.startup_timeout_s,
        request_timeout_s=c.request_timeout_s,
        hang_after_s=args.hang_after,
    )
    return run_async(wrapper.run())
