"""`appliance config show|check`: the merged settings with their sources, and validation of a config file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from appliance.commands import ExitCode, command_help, print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help=command_help("config"))
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    show = sub.add_parser(
        "show", help="print the merged settings (secrets redacted) and where each came from"
    )
    show.add_argument("--config", metavar="FILE", help="config file (default: $APPLIANCE_CONFIG)")
    show.add_argument("--json", action="store_true", help="print JSON: settings, sources and the config file")
    show.set_defaults(handler=show_handler)

    check = sub.add_parser("check", help="validate a config file; prints ok or one line per error (exit 2)")
    check.add_argument("file", metavar="FILE", help="TOML, YAML or JSON config file")
    check.add_argument(
        "--with-env",
        action="store_true",
        help="also apply the APPLIANCE_* environment, as a process started here would",
    )
    check.add_argument(
        "--no-open-files",
        action="store_true",
        help="check the settings only; do not open the files `*_file` settings name (a build sandbox, where "
        "they do not exist yet)",
    )
    check.set_defaults(handler=check_handler)


def _report(errors: list[str]) -> int:
    for line in errors:
        print(f"appliance: error: {line}", file=sys.stderr)
    return ExitCode.USAGE


def show_handler(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_settings, redacted_dump

    try:
        loaded = load_settings(args.config)
    except ConfigError as exc:
        return _report(exc.errors)
    data = redacted_dump(loaded.settings)
    if args.json:
        config_file = str(loaded.config_path) if loaded.config_path else None
        print_json({"settings": data, "sources": loaded.sources, "config_file": config_file})
        return 0
    print(f"# config file: {loaded.config_path or '(none)'}")
    for key, source in loaded.sources.items():  # one entry per setting, in schema order
        print(f"{key} = {json.dumps(_lookup(data, key), default=str)}  # {source}")
    return 0


def check_handler(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_settings

    env = dict(os.environ)
    if not args.with_env:  # judge the file alone, not whatever this shell happens to export
        env = {k: v for k, v in env.items() if not k.startswith("APPLIANCE_")}
    try:
        loaded = load_settings(args.file, env=env, open_files=not args.no_open_files)
    except ConfigError as exc:
        return _report(exc.errors)
    from appliance.worker.packages import missing_packages

    settings = loaded.settings
    missing = missing_packages(settings, settings.enabled_connectors())
    if missing:
        return _report(missing)
    print("ok")
    return 0


def _lookup(data: dict[str, Any], key: str) -> Any:
    value: Any = data
    for part in key.split("."):
        value = value[part]
    return value
