"""`appliance units install|list|uninstall`: put the packaged systemd units onto a host or into a root directory."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from appliance.commands import CommandError, command_help, print_json

if TYPE_CHECKING:
    from appliance.units.install import InstallFile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("units", help=command_help("units"))
    sub = parser.add_subparsers(dest="units_command", metavar="SUBCOMMAND", required=True)

    install = sub.add_parser("install", help="install unit files, drop-ins and the service plan's instances")
    _add_common(install)
    install.add_argument(
        "--no-user",
        action="store_true",
        help="do not run systemd-sysusers now (the user is then created at the next boot)",
    )
    install.set_defaults(handler=_install)

    show = sub.add_parser("list", help="print what `install` would write, without writing")
    _add_common(show)
    show.add_argument(
        "--json", action="store_true", help="print JSON (with file contents) instead of a table"
    )
    show.set_defaults(handler=_list)

    render = sub.add_parser(
        "render",
        help="write the unit files with the executable filled in, as a package ships them (the Nix build)",
    )
    render.add_argument(
        "--bin", dest="bin_path", required=True, metavar="PATH", help="the appliance executable"
    )
    render.add_argument(
        "--dest", required=True, metavar="DIR", help="unit directory, e.g. $out/lib/systemd/system"
    )
    render.add_argument("--tmpfiles", metavar="FILE", help="also write the tmpfiles.d entry here")
    render.add_argument("--sysusers", metavar="FILE", help="also write the sysusers.d entry here")
    render.set_defaults(handler=_render)

    remove = sub.add_parser("uninstall", help="remove what `install` wrote (the env file stays)")
    remove.add_argument("--root", default="/", help="root directory (default: /)")
    remove.set_defaults(handler=_uninstall)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", help="install under this root directory (default: /)")
    parser.add_argument(
        "--bin",
        dest="bin_path",
        metavar="PATH",
        help="absolute path of the appliance executable as seen inside the root "
        "(default with --root /: the appliance executable running now)",
    )
    plan = parser.add_mutually_exclusive_group()
    plan.add_argument(
        "--plan-json",
        metavar="FILE",
        help="service plan as written by `appliance machine plan --json` ('-': stdin)",
    )
    plan.add_argument(
        "--from-machine-plan",
        action="store_true",
        help="compute the plan now by running `appliance machine plan --json`",
    )
    parser.add_argument(
        "--enable",
        action="store_true",
        help="also link appliance.target into multi-user.target.wants (start at boot)",
    )
    parser.add_argument(
        "--container-mode",
        action="store_true",
        help="the supervisor failing past its start limit stops PID 1 (FailureAction=exit)",
    )
    parser.add_argument(
        "--config",
        dest="config_path",
        metavar="FILE",
        help="set APPLIANCE_CONFIG=FILE for every appliance unit (a drop-in)",
    )


def _default_bin() -> str:
    # A venv's console script sits beside its interpreter; elsewhere PATH finds it.
    beside = Path(sys.executable).with_name("appliance")
    if beside.is_file():
        return str(beside)
    found = shutil.which("appliance")
    if found is None:
        raise CommandError("cannot find the appliance executable: pass --bin PATH")
    return str(Path(found).absolute())


def _plan_text(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.plan_json == "-":
        return sys.stdin.read(), "stdin"
    if args.plan_json:
        try:
            return Path(args.plan_json).read_text(encoding="utf-8"), args.plan_json
        except OSError as exc:
            raise CommandError(f"--plan-json {args.plan_json}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(f"--plan-json {args.plan_json}: not UTF-8 text (byte {exc.start})") from None
    if args.from_machine_plan:
        # In-process rather than a subprocess: under Nix the bare interpreter cannot import the package.
        return json.dumps(_machine_plan(args)), "`appliance machine plan --json`"
    return None


def _machine_plan(args: argparse.Namespace) -> dict[str, object]:
    from appliance.config import ConfigError, load_settings
    from appliance.machine.plan import PlanError, plan_from_settings
    from appliance.machine.resources import Nvml

    try:
        settings = load_settings(args.config_path).settings
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    nvml = Nvml().start()
    try:
        gpus = len(nvml.gpus())
    finally:
        nvml.stop()
    try:
        return plan_from_settings(settings, gpus).to_dict()
    except PlanError as exc:
        raise CommandError(f"`appliance machine plan --json` failed: {exc}") from None


def _planned(args: argparse.Namespace) -> tuple[Path, list[InstallFile]]:
    from appliance.units import install as inst

    root = Path(args.root).absolute()  # systemd-sysusers --root= needs an absolute path
    if not root.is_dir():
        raise CommandError(f"--root {args.root}: not a directory")
    if args.bin_path is None and root.resolve() != Path("/"):
        raise CommandError("--bin PATH is required with --root: the executable's path inside that root")
    config_path = None
    if args.config_path is not None:
        config_path = PurePosixPath(args.config_path)
        if not config_path.is_absolute():
            raise CommandError(f"--config {args.config_path}: must be an absolute path")
    try:
        bin_path = inst.check_bin_path(args.bin_path or _default_bin(), root)
        plan = _plan_text(args)
        units = inst.parse_plan(*plan) if plan else ()
    except inst.InstallError as exc:
        raise CommandError(str(exc)) from None
    options = inst.InstallOptions(
        bin_path=bin_path,
        units=units,
        enable=args.enable,
        container_mode=args.container_mode,
        config_path=config_path,
    )
    return root, inst.plan_install(options)


def _install(args: argparse.Namespace) -> int:
    from appliance.units import install as inst

    root, files = _planned(args)
    try:
        inst.write(root, files)
    except OSError as exc:
        raise CommandError(f"writing under {root}: {exc}") from None
    for f in files:
        print(root / f.path)
    if not args.no_user and (problem := inst.create_user(root)):
        raise CommandError(problem)
    if root.resolve() == Path("/"):
        print("now run: systemctl daemon-reload && systemctl restart appliance.target", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    root, files = _planned(args)
    if args.json:
        print_json(
            [
                {"path": str(root / f.path), "kind": f.kind.value, "link": f.link, "content": f.content}
                for f in files
            ]
        )
        return 0
    for f in files:
        detail = f" -> {f.link}" if f.link else ""
        print(f"{f.kind.value:9} {root / f.path}{detail}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from appliance.units import install as inst

    try:
        bin_path = inst.check_bin_path(args.bin_path, Path("/"))
        units = inst.render_units(bin_path)
    except inst.InstallError as exc:
        raise CommandError(str(exc)) from None
    packaged = inst.packaged_files()
    outputs = [(Path(args.dest) / name, text) for name, text in units.items()]
    for option, name in ((args.tmpfiles, "tmpfiles.conf"), (args.sysusers, "sysusers.conf")):
        if option:
            outputs.append((Path(option), packaged[name]))
    try:
        for path, text in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o444)
    except OSError as exc:
        raise CommandError(f"writing {exc.filename}: {exc.strerror}") from None
    for path, _ in outputs:
        print(path)
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from appliance.units import install as inst

    root = Path(args.root).absolute()
    if not root.is_dir():
        raise CommandError(f"--root {args.root}: not a directory")
    for path in inst.uninstall(root):
        print(path)
    return 0
