"""The `appliance` command: parses arguments and hands off to one module per command group.

Each module in `appliance.commands` exposes `register(subparsers)`; parsers are built eagerly (cheap),
while each handler imports what it needs (aiohttp, openai, NVML) only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from appliance.commands import CommandError

#: Command modules, in the order `appliance --help` lists them.
COMMAND_MODULES = (
    "appliance.commands.demo",
    "appliance.commands.job",
    "appliance.commands.worker",
    "appliance.commands.machine",
    "appliance.commands.comfyui",
    "appliance.commands.config",
    "appliance.commands.units",
    "appliance.commands.monitor",
    "appliance.commands.pools",
    "appliance.commands.fleet",
    "appliance.commands.redis",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Turn GPU machines (one ComfyUI per GPU) and API machines into workers of one Redis job pool.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"),
        help="logging level (default: INFO, or $APPLIANCE_LOG_LEVEL)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command group not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except CommandError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
