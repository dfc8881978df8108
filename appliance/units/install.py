"""Install the packaged unit files onto a systemd host, or into a root directory (an image, an nspawn rootfs).

The files in this package are the one source of truth for the units. They name the executable as
`@APPLIANCE_BIN@`; installing replaces it with the real path (a venv's `bin/appliance`, `/usr/local/bin/appliance`),
as the Nix derivation does with its store path. On top of the unit files the installer writes:

- per-instance drop-ins binding `appliance-worker@gpuN` to `appliance-comfyui@N` (the worker template also
  serves API slots, so the binding cannot live in the template),
- per-instance drop-ins giving `appliance-worker@<connector><N>` its own connector's API key credential
  (`LoadCredential=` is a list that drop-ins append to, systemd.exec(5)): the template loads only what every
  worker needs, so no worker can read another connector's key,
- the service plan's instances as symlinks in `appliance.target.wants/`, exactly what `systemctl enable` would
  create, so installing works offline and into a tree no systemd runs in,
- optional drop-ins: container mode (the machine failing for good stops the container) and a config path,
- the `appliance` system user (sysusers.d) and the root-owned directories (tmpfiles.d).

Everything it writes is listed up front by `plan_install` (what `appliance units list` prints), and everything
it ever wrote is found again by `managed_paths`, so a re-install with another plan leaves nothing stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, ValidationError

from appliance import identity
from appliance.secrets import connector_credential

#: Replaced by the absolute path of the `appliance` executable when the units are installed.
BIN_PLACEHOLDER = "@APPLIANCE_BIN@"
#: Replaced by where the package installed docs/systemd.md (see `doc_path`).
DOC_PLACEHOLDER = "@APPLIANCE_DOC@"

#: Where units, drop-ins and wants links go, relative to the root: the administrator's unit directory, which
#: every systemd searches and which the distribution's package manager never touches.
UNIT_DIR = PurePosixPath("etc/systemd/system")
TMPFILES_DIR = PurePosixPath("etc/tmpfiles.d")
SYSUSERS_DIR = PurePosixPath("etc/sysusers.d")
CONFIG_DIR = PurePosixPath("etc/appliance")

TARGET = "appliance.target"
MACHINE_UNIT = identity.unit_name(identity.MACHINE_SERVICE)
COMFYUI_TEMPLATE = identity.template_unit(identity.COMFYUI_TEMPLATE)
WORKER_TEMPLATE = identity.template_unit(identity.WORKER_TEMPLATE)
ONFAILURE_TEMPLATE = identity.template_unit(identity.ONFAILURE_TEMPLATE)
#: Packaged name -> installed path, for the files that are not units.
SYSTEM_FILES = {
    "tmpfiles.conf": TMPFILES_DIR / "appliance.conf",
    "sysusers.conf": SYSUSERS_DIR / "appliance.conf",
}

COMFYUI_DROPIN = "10-comfyui.conf"
CREDENTIALS_DROPIN = "30-credentials.conf"
CONFIG_DROPIN = "20-config.conf"
CONTAINER_DROPIN = "50-container-mode.conf"
#: A drop-in directory named by a unit-name prefix applies to every unit starting with it (systemd.unit(5)).
ALL_UNITS_DROPIN_DIR = "appliance-.service.d"
#: What the container exits with when the machine failed for good (--container-mode).
CONTAINER_EXIT_STATUS = 70

#: The templates a service plan may name instances of.
_PLAN_TEMPLATES = (identity.COMFYUI_TEMPLATE, identity.WORKER_TEMPLATE)
# ProtectHome=yes hides these from every unit, so an executable there could never start.
_HIDDEN_BY_PROTECT_HOME = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))

ENV_FILE_TEMPLATE = """\
# Environment of every appliance unit (EnvironmentFile=-/etc/appliance/appliance.env); see `appliance config show`.
# Secrets do not belong here: put them in /etc/credstore/<name> (redis-password, openai-api-key, ...).
#APPLIANCE_CONFIG=/etc/appliance/config.toml
#APPLIANCE_REDIS_URL=redis://redis.internal:6379/0
"""


class InstallError(Exception):
    """The installation cannot be planned or written; the message says what to change."""


class FileKind(StrEnum):
    UNIT = "unit"
    DROPIN = "drop-in"
    TMPFILES = "tmpfiles"
    SYSUSERS = "sysusers"
    WANTS = "wants"
    CONFIG = "config"


@dataclass(frozen=True)
class InstallFile:
    """One file or symlink, at `path` relative to the root; exactly one of `content`, `link` is set."""

    path: PurePosixPath
    kind: FileKind
    content: str | None = None
    link: str | None = None
    mode: int = 0o644
    #: Written only when absent: the operator owns it afterwards.
    keep_existing: bool = False


class PlanService(BaseModel):
    """One entry of `appliance machine plan --json`; the fields the installer does not need are ignored."""

    model_config = ConfigDict(extra="ignore")
    unit: str


class ServicePlanDoc(BaseModel):
    model_config = ConfigDict(extra="ignore")
    machine_type: str | None = None
    services: list[PlanService]


@dataclass(frozen=True)
class InstallOptions:
    bin_path: PurePosixPath
    units: tuple[str, ...] = ()
    enable: bool = False
    container_mode: bool = False
    config_path: PurePosixPath | None = None


def parse_plan(text: str, source: str) -> tuple[str, ...]:
    """The unit instances of a service plan document; `source` names it in errors."""
    try:
        doc = ServicePlanDoc.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise InstallError(f"{source}: not a service plan: {where}: {first['msg']}") from None
    units = tuple(dict.fromkeys(s.unit for s in doc.services))
    for unit in units:
        check_plan_unit(unit)
    return units


def check_plan_unit(unit: str) -> None:
    """Refuse a plan entry that is not an instance of our templates (or the machine unit itself)."""
    if unit == MACHINE_UNIT:
        return
    parsed = identity.instance_of_unit(unit)
    if parsed is None or parsed[0] not in _PLAN_TEMPLATES:
        raise InstallError(
            f"plan names unit {unit!r}: expected {identity.unit_name(identity.service_name(identity.COMFYUI_TEMPLATE, '<gpu>'))} or "
            f"{identity.worker_unit('<slot>')}"
        )
    template, instance = parsed
    if template == identity.COMFYUI_TEMPLATE and not instance.isdigit():
        raise InstallError(f"plan names unit {unit!r}: the ComfyUI instance is a GPU index")
    if template == identity.WORKER_TEMPLATE:
        try:
            identity.parse_slot(instance)
        except identity.SlotError as exc:
            raise InstallError(f"plan names unit {unit!r}: {exc}") from None


def check_bin_path(bin_path: str, root: Path) -> PurePosixPath:
    """The executable path as units will name it: absolute, reachable under the units' sandbox, present."""
    path = PurePosixPath(bin_path)
    if not path.is_absolute():
        raise InstallError(f"--bin {bin_path}: must be an absolute path")
    for hidden in _HIDDEN_BY_PROTECT_HOME:
        if path.is_relative_to(hidden):
            raise InstallError(
                f"--bin {bin_path}: {hidden} is hidden from the units by ProtectHome=yes; "
                "install appliance under /opt or /usr/local"
            )
    on_disk = root / path.relative_to("/")
    # A symlink under another root may point at a path that only resolves inside it: trust it.
    if not on_disk.is_symlink() and not (on_disk.is_file() and os.access(on_disk, os.X_OK)):
        where = f" under {root}" if root != Path("/") else ""
        raise InstallError(f"--bin {bin_path}: no executable file there{where}")
    return path


def packaged_files() -> dict[str, str]:
    """The unit and tmpfiles files shipped in this package, by file name."""
    out: dict[str, str] = {}
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith((".service", ".target", ".conf")):
            out[entry.name] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def doc_path(bin_path: PurePosixPath) -> PurePosixPath:
    """Where the package installs docs/systemd.md (pyproject's data-files): under the prefix of the executable,
    `<prefix>/bin/appliance` → `<prefix>/share/doc/appliance/systemd.md` (a venv, the Nix store path)."""
    return bin_path.parent.parent / "share" / "doc" / "appliance" / "systemd.md"


def render(text: str, bin_path: PurePosixPath) -> str:
    return text.replace(DOC_PLACEHOLDER, str(doc_path(bin_path))).replace(BIN_PLACEHOLDER, str(bin_path))


def render_units(bin_path: PurePosixPath, packaged: dict[str, str] | None = None) -> dict[str, str]:
    """Every packaged unit file (the `.service` and `.target` files) with the executable filled in, by name.

    What `appliance units render` writes: a distribution package's (Nix's) unit directory. Files that name no
    executable (appliance.target) pass through unchanged, so no file is special.
    """
    packaged = packaged_files() if packaged is None else packaged
    out = {name: render(text, bin_path) for name, text in packaged.items() if name not in SYSTEM_FILES}
    for name, text in out.items():
        if BIN_PLACEHOLDER in text:  # pragma: no cover - render() replaces every occurrence
            raise InstallError(f"{name}: {BIN_PLACEHOLDER} left after rendering")
    return out


def _dropin(unit: str, name: str) -> PurePosixPath:
    return UNIT_DIR / f"{unit}.d" / name


def comfyui_binding(slot: str) -> str | None:
    """The drop-in text that makes worker slot `gpuN` follow ComfyUI instance N; None for API slots."""
    try:
        parsed = identity.parse_slot(slot)
    except identity.SlotError:
        return None
    if not parsed.gpu:
        return None
    comfyui = identity.comfyui_unit(parsed.index)
    return (
        "# Written by `appliance units install`: this worker serves that ComfyUI instance, so it starts\n"
        "# after it and stops (or restarts) with it.\n"
        f"[Unit]\nBindsTo={comfyui}\nPartOf={comfyui}\nAfter={comfyui}\n"
    )


def connector_credentials(slot: str) -> str | None:
    """The drop-in text that hands worker slot `<connector><N>` its connector's API key; None for a slot whose
    connector uses none (GPU slots, echo)."""
    try:
        parsed = identity.parse_slot(slot)
    except identity.SlotError:
        return None
    credential = None if parsed.gpu else connector_credential(parsed.connector)
    if credential is None:
        return None
    return (
        "# Written by `appliance units install`: this worker's connector key, and no other connector's. A bare\n"
        "# name is looked up in /etc/credstore/ and /run/credstore/ (a missing one is skipped).\n"
        f"[Service]\nLoadCredential={credential}\n"
    )


def plan_install(options: InstallOptions, packaged: dict[str, str] | None = None) -> list[InstallFile]:
    """Every file the installation consists of, in writing order."""
    packaged = packaged_files() if packaged is None else packaged
    files: list[InstallFile] = []
    for name, text in packaged.items():
        if name in SYSTEM_FILES:
            kind = FileKind.SYSUSERS if name == "sysusers.conf" else FileKind.TMPFILES
            files.append(InstallFile(SYSTEM_FILES[name], kind, content=text))
        else:
            files.append(InstallFile(UNIT_DIR / name, FileKind.UNIT, content=render(text, options.bin_path)))
    files += _dropins(options)
    files += _wants(options)
    files.append(
        InstallFile(
            CONFIG_DIR / "appliance.env",
            FileKind.CONFIG,
            content=ENV_FILE_TEMPLATE,
            mode=0o640,
            keep_existing=True,
        )
    )
    return files


def _dropins(options: InstallOptions) -> list[InstallFile]:
    """The drop-ins the options ask for: ComfyUI bindings of GPU workers, each API worker's key, container
    mode, the config path."""
    files: list[InstallFile] = []
    for unit in options.units:
        parsed = identity.instance_of_unit(unit)
        if not parsed or parsed[0] != identity.WORKER_TEMPLATE:
            continue
        if binding := comfyui_binding(parsed[1]):
            files.append(InstallFile(_dropin(unit, COMFYUI_DROPIN), FileKind.DROPIN, content=binding))
        if credentials := connector_credentials(parsed[1]):
            files.append(InstallFile(_dropin(unit, CREDENTIALS_DROPIN), FileKind.DROPIN, content=credentials))
    if options.container_mode:
        files.append(
            InstallFile(
                _dropin(MACHINE_UNIT, CONTAINER_DROPIN),
                FileKind.DROPIN,
                content=(
                    "# Written by `appliance units install --container-mode`: when the supervisor fails past its\n"
                    "# start limit the machine is beyond repair, so PID 1 exits and the container with it. The\n"
                    "# status is fixed: after a start-limit failure there is no main process whose status could pass.\n"
                    f"[Unit]\nFailureAction=exit\nFailureActionExitStatus={CONTAINER_EXIT_STATUS}\n"
                ),
            )
        )
    if options.config_path is not None:
        files.append(
            InstallFile(
                UNIT_DIR / ALL_UNITS_DROPIN_DIR / CONFIG_DROPIN,
                FileKind.DROPIN,
                content=(
                    "# Written by `appliance units install --config`.\n"
                    f"[Service]\nEnvironment=APPLIANCE_CONFIG={options.config_path}\n"
                ),
            )
        )
    return files


def _wants(options: InstallOptions) -> list[InstallFile]:
    """The `.wants` links: the target wants each unit, and multi-user.target the target when enabled."""
    files: list[InstallFile] = []
    for unit in options.units:
        if unit == MACHINE_UNIT:
            continue  # appliance.target wants it already
        template = identity.template_of_unit(unit)
        files.append(
            InstallFile(UNIT_DIR / f"{TARGET}.wants" / unit, FileKind.WANTS, link=f"/{UNIT_DIR / template}")
        )
    if options.enable:
        files.append(
            InstallFile(
                UNIT_DIR / "multi-user.target.wants" / TARGET, FileKind.WANTS, link=f"/{UNIT_DIR / TARGET}"
            )
        )
    return files


def managed_paths(root: Path, packaged: dict[str, str] | None = None) -> list[Path]:
    """Everything under `root` that an earlier installation may have written (the env file excepted)."""
    packaged = packaged_files() if packaged is None else packaged
    unit_dir = root / UNIT_DIR
    found: list[Path] = []
    for name in packaged:
        path = root / SYSTEM_FILES[name] if name in SYSTEM_FILES else unit_dir / name
        if path.exists() or path.is_symlink():
            found.append(path)
    wants = unit_dir / f"{TARGET}.wants"
    if wants.is_dir():
        found += [p for p in wants.iterdir() if p.is_symlink() and p.name.startswith("appliance-")]
    for name in (COMFYUI_DROPIN, CREDENTIALS_DROPIN):
        found += [p for p in unit_dir.glob(f"appliance-worker@*.service.d/{name}")]
    found += [
        p
        for p in [
            unit_dir / f"{MACHINE_UNIT}.d" / CONTAINER_DROPIN,
            unit_dir / ALL_UNITS_DROPIN_DIR / CONFIG_DROPIN,
            unit_dir / "multi-user.target.wants" / TARGET,
        ]
        if p.exists() or p.is_symlink()
    ]
    return sorted(found)


def _remove(paths: list[Path], root: Path) -> None:
    for path in paths:
        path.unlink()
        parent = path.parent
        # Drop-in and wants directories we emptied go too; the unit directory itself stays.
        if (
            parent.parent == root / UNIT_DIR
            and parent.name.endswith((".d", ".wants"))
            and not any(parent.iterdir())
        ):
            parent.rmdir()


def write(root: Path, files: list[InstallFile]) -> None:
    """Replace any earlier installation under `root` with `files`."""
    _remove(managed_paths(root), root)
    for f in files:
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.link is not None:
            target.symlink_to(f.link)
            continue
        if f.keep_existing and target.exists():
            continue
        assert f.content is not None
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(f.content, encoding="utf-8")
        tmp.chmod(f.mode)
        tmp.replace(target)


def create_user(root: Path) -> str | None:
    """Create the `appliance` user now (systemd-sysusers), as boot would; returns why not, if it could not."""
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        return "systemd-sysusers not found: create the system user `appliance` before starting the units"
    proc = subprocess.run(
        [tool, f"--root={root}", str(root / SYSTEM_FILES["sysusers.conf"])],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return f"systemd-sysusers failed: {proc.stderr.strip()}"
    return None


def uninstall(root: Path) -> list[Path]:
    """Remove what `write` installed under `root` (the env file stays: it is the operator's)."""
    paths = managed_paths(root)
    _remove(paths, root)
    return paths
