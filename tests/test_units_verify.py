"""The packaged unit files, checked by systemd's own tools after a real `appliance units install`.

`systemd-analyze verify` loads each unit the way PID 1 would (it needs the ExecStart binary to exist, so the
units are installed into a temporary root naming a real executable that runs this checkout's CLI), and
`systemd-analyze security --offline=yes` scores the sandbox. Neither needs systemd to be running.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.commands import ExitCode
from appliance.secrets import CREDENTIALS
from appliance.units import install as inst

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)

PLAN = {
    "machine_type": "gpu",
    "services": [
        {"unit": "appliance-comfyui@0.service"},
        {"unit": "appliance-worker@gpu0.service"},
        {"unit": "appliance-worker@echo0.service"},
    ],
}
#: Every unit (instance) the plan above produces, plus the handler an OnFailure= of each would start.
INSTANCES = [
    "appliance.target",
    "appliance-machine.service",
    "appliance-comfyui@0.service",
    "appliance-worker@gpu0.service",
    "appliance-worker@echo0.service",
    "appliance-onfailure@appliance-worker@gpu0.service",
    "appliance-api.service",
]
#: Exposure (systemd-analyze security, 0 = locked down, 10 = exposed) each unit must stay under.
MAX_EXPOSURE = {
    "appliance-machine.service": 1.5,
    "appliance-worker@gpu0.service": 1.5,
    "appliance-worker@echo0.service": 1.5,
    "appliance-onfailure@appliance-worker@gpu0.service": 1.5,
    "appliance-api.service": 1.5,
    # CUDA rules out PrivateDevices= and MemoryDenyWriteExecute=.
    "appliance-comfyui@0.service": 2.0,
}
HARDENING = {
    "CapabilityBoundingSet": "",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "ProtectSystem": "strict",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "RestrictNamespaces": "yes",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values in order (keys repeat in unit files)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the units installed, naming an executable that exists at the same path on this host."""
    host = tmp_path_factory.mktemp("bin")
    exe = host / "appliance"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m appliance "$@"\n', encoding="utf-8")
    exe.chmod(0o755)
    root = tmp_path_factory.mktemp("root")
    # The installer checks the executable under the root; verify checks it on the host: same path, both places.
    (root / exe.parent.relative_to("/")).mkdir(parents=True)
    (root / exe.relative_to("/")).symlink_to(exe)
    options = inst.InstallOptions(
        bin_path=inst.check_bin_path(str(exe), root),
        units=inst.parse_plan(json.dumps(PLAN), "test plan"),
        container_mode=True,
    )
    inst.write(root, inst.plan_install(options))
    return root


def analyze(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    # A trailing ":" appends systemd's own unit directories (for sysinit.target and friends).
    env = {
        "SYSTEMD_UNIT_PATH": f"{root / inst.UNIT_DIR}:",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SYSTEMD_LOG_COLOR": "0",
    }
    return subprocess.run([ANALYZE, *argv], capture_output=True, text=True, env=env, cwd=root, check=False)


@needs_analyze
def test_systemd_analyze_verify_is_clean(installed: Path) -> None:
    proc = analyze(installed, "verify", *INSTANCES)
    # verify exits 0 on unknown keys and bad values (it only warns), so any output at all is a failure.
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@needs_analyze
def test_verify_notices_a_missing_executable(installed: Path, tmp_path: Path) -> None:
    """The check above is not vacuous: verify does load our units and does look at ExecStart."""
    copy = tmp_path / "root"
    shutil.copytree(installed, copy, symlinks=True)
    unit = copy / inst.UNIT_DIR / "appliance-worker@.service"
    unit.write_text(
        re.sub(r"^ExecStart=\S+", "ExecStart=/nonexistent/appliance", unit.read_text(), flags=re.M)
    )
    proc = analyze(copy, "verify", "appliance-worker@echo0.service")
    assert "/nonexistent/appliance" in proc.stdout + proc.stderr


@needs_analyze
@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_security_exposure(installed: Path, unit: str) -> None:
    limit = MAX_EXPOSURE[unit]
    proc = analyze(installed, "security", "--offline=yes", f"--threshold={int(limit * 10)}", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match[1]) <= limit, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def units_by_name() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {
        name: parse_unit(text)
        for name, text in inst.packaged_files().items()
        if name not in inst.SYSTEM_FILES
    }


@pytest.mark.parametrize("name", [n for n in inst.packaged_files() if n not in inst.SYSTEM_FILES])
def test_unit_file_style(name: str) -> None:
    text = inst.packaged_files()[name]
    assert text.startswith("#  SPDX-License-Identifier: MIT\n")
    sections = parse_unit(text)
    assert list(sections["Unit"])[:2] == ["Description", "Documentation"]
    if "Service" in sections:
        keys = [line.partition("=")[0] for line in _section_lines(text, "Service")]
        assert keys == sorted(keys), "[Service] keys must be alphabetised"
        assert sections["Service"]["ExecStart"][0].startswith(inst.BIN_PLACEHOLDER + " ")


def _section_lines(text: str, section: str) -> list[str]:
    lines, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{section}]"
        elif inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


@pytest.mark.parametrize(
    "name",
    [
        "appliance-machine.service",
        "appliance-worker@.service",
        "appliance-comfyui@.service",
        "appliance-api.service",
    ],
)
def test_long_running_units_are_supervised(name: str) -> None:
    unit = units_by_name()[name]
    service = unit["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] and service["Restart"] == ["on-failure"]
    assert service["KillMode"] == ["mixed"]
    # Start limits are [Unit] keys: in [Service] systemd would ignore them.
    assert unit["Unit"]["StartLimitBurst"] and unit["Unit"]["StartLimitIntervalSec"]
    on_failure = ["appliance-onfailure@%N.service"]
    if name == "appliance-machine.service":
        on_failure.append("appliance-target-down.service")
    assert unit["Unit"]["OnFailure"] == [" ".join(on_failure)]
    # A configuration error is not retried (restarting cannot fix it); its cause stays in STATUS=.
    assert service["RestartPreventExitStatus"] == [str(int(ExitCode.CONFIG))]
    assert unit["Unit"]["PartOf"] == ["appliance.target"]
    assert service["EnvironmentFile"] == ["-/etc/appliance/appliance.env"]
    for key, value in HARDENING.items():
        assert service.get(key) is not None and value in service[key], f"{name}: {key}"
    # The shared directory comes first: `machine record-stop` counts in the first $STATE_DIRECTORY entry.
    assert service["StateDirectory"][0].split()[0] == "appliance"
    assert service["User"] == ["appliance"] and service["Group"] == ["appliance"]


def test_worker_stop_timeout_covers_the_drain() -> None:
    from appliance.config import Settings

    drain = Settings().worker.drain_grace_s
    stop = units_by_name()["appliance-worker@.service"]["Service"]["TimeoutStopSec"][0]
    from appliance.contract import WORKER_STOP_MARGIN_S

    assert stop.endswith("s") and float(stop[:-1]) >= drain + WORKER_STOP_MARGIN_S


def test_comfyui_keeps_the_gpu_reachable() -> None:
    service = units_by_name()["appliance-comfyui@.service"]["Service"]
    assert "PrivateDevices" not in service and "MemoryDenyWriteExecute" not in service
    assert service["DevicePolicy"] == ["closed"]
    assert {v.split()[0] for v in service["DeviceAllow"]} >= {
        "char-nvidiactl",
        "char-nvidia-uvm",
        "char-nvidia-frontend",
    }


def test_credentials_match_what_the_app_reads() -> None:
    """Bare-name LoadCredential= (a missing one is skipped, so units start without it) for each secret the
    unit's process may need, spelled as appliance.secrets names them. The worker template loads only what
    every worker may need: a connector's API key comes from the instance's drop-in (tests/systemd/
    test_install.py), so no worker can read another connector's key (issue 11, defect 9)."""
    units = units_by_name()
    names = set(CREDENTIALS.values())
    worker = set(units["appliance-worker@.service"]["Service"]["LoadCredential"])
    assert worker == {"redis-password", "s3-secret-access-key"}
    for name in ("appliance-machine.service", "appliance-onfailure@.service"):
        assert units[name]["Service"]["LoadCredential"] == ["redis-password"]
    assert set(units["appliance-api.service"]["Service"]["LoadCredential"]) == {
        "redis-password",
        "s3-secret-access-key",
    }
    for unit in units.values():
        for value in unit.get("Service", {}).get("LoadCredential", []):
            assert ":" not in value and value in names


def test_comfyui_state_directory_is_where_the_wrapper_points_comfyui() -> None:
    """The unit's StateDirectory= (as systemd expands it into $STATE_DIRECTORY) is the directory `appliance
    comfyui` hands ComfyUI: the only writable place under ProtectSystem=strict (issue 11, defect 2)."""
    from appliance.config import Settings
    from appliance.machine.comfyui import build_command

    service = units_by_name()["appliance-comfyui@.service"]["Service"]
    assert service["ProtectSystem"] == ["strict"]
    entries = [e.replace("%i", "3") for value in service["StateDirectory"] for e in value.split()]
    env = {"STATE_DIRECTORY": ":".join(f"/var/lib/{e}" for e in entries)}
    command = build_command(Settings(), 3, env)
    assert command.base_dir == Path("/var/lib/appliance/comfyui-3")
    assert f"/var/lib/{entries[0]}" == "/var/lib/appliance"


def render_cli(tmp_path: Path, bin_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "units",
            "render",
            "--bin",
            str(bin_path),
            "--dest",
            str(tmp_path / "lib/systemd/system"),
            "--tmpfiles",
            str(tmp_path / "lib/tmpfiles.d/appliance.conf"),
            "--sysusers",
            str(tmp_path / "lib/sysusers.d/appliance.conf"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the Nix package's install step writes: `appliance units render` into $out."""
    out = tmp_path_factory.mktemp("out")
    exe = out / "bin" / "appliance"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m appliance "$@"\n', encoding="utf-8")
    exe.chmod(0o755)
    proc = render_cli(out, exe)
    assert proc.returncode == 0, proc.stderr
    return out


def test_render_writes_every_packaged_file(rendered: Path) -> None:
    """Every unit, the target included (defect 1: the placeholder substitution broke on appliance.target,
    which names no executable), with nothing left to substitute."""
    unit_dir = rendered / "lib/systemd/system"
    packaged = inst.packaged_files()
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(set(packaged) - set(inst.SYSTEM_FILES))
    exe = rendered / "bin" / "appliance"
    for path in unit_dir.iterdir():
        text = path.read_text()
        assert inst.BIN_PLACEHOLDER not in text, path.name
        if path.suffix == ".service":
            assert f"ExecStart={exe} " in text, path.name
    assert (rendered / "lib/tmpfiles.d/appliance.conf").read_text() == packaged["tmpfiles.conf"]
    assert (rendered / "lib/sysusers.d/appliance.conf").read_text() == packaged["sysusers.conf"]


@needs_analyze
def test_rendered_units_verify(rendered: Path) -> None:
    """The package's unit directory as NixOS reads it (no drop-ins, no wants links) loads cleanly."""
    env = {
        "SYSTEMD_UNIT_PATH": f"{rendered / 'lib/systemd/system'}:",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SYSTEMD_LOG_COLOR": "0",
    }
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", *INSTANCES],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_render_refuses_a_missing_executable(tmp_path: Path) -> None:
    proc = render_cli(tmp_path, tmp_path / "bin" / "appliance")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"appliance: error: --bin {tmp_path}/bin/appliance: no executable file there"
    )
    assert not (tmp_path / "lib").exists()


def test_the_supervisor_is_started_by_the_target_only() -> None:
    """appliance.target Wants= the supervisor; an [Install] section of its own would only make `systemctl
    status` read "disabled; preset: enabled" for a unit that is never enabled by itself."""
    units = units_by_name()
    assert "appliance-machine.service" in units["appliance.target"]["Unit"]["Wants"][0].split()
    assert "Install" not in units["appliance-machine.service"]
