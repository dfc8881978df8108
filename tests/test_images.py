"""The image entrypoint (images/entrypoint.sh) run under `sh` with exactly the tools the image has.

The image's system group holds bash (which provides `sh`), coreutils, cacert, iana-etc and systemd
(images/default.nix). The entrypoint must work with only those: an earlier version piped `env` into `grep`,
which the image lacks, and `|| true` hid the failure, so appliance.env was written empty and no APPLIANCE_*
variable reached the units under systemd (issue 11, defect 5); the GPU variables the container runtime sets
were not forwarded either (defect 6). Here the script runs under the host's POSIX sh with a PATH holding only
the host's coreutils programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "images" / "entrypoint.sh"


def coreutils_programs() -> list[Path]:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg not found: cannot list the coreutils programs of this host")
    listed = subprocess.run([dpkg, "-L", "coreutils"], capture_output=True, text=True, check=False).stdout
    programs = [Path(p) for p in listed.splitlines() if "/bin/" in p and Path(p).is_file()]
    if not programs:
        pytest.skip("coreutils is not installed as a Debian package here")
    return programs


@pytest.fixture
def image_path(tmp_path: Path) -> str:
    """A PATH with coreutils and bash only, like /bin in the image (`PATH=/bin` in its Env)."""
    bin_dir = tmp_path / "image-bin"
    bin_dir.mkdir()
    for program in coreutils_programs():
        (bin_dir / program.name).symlink_to(program)
    bash = shutil.which("bash")
    assert bash is not None
    (bin_dir / "bash").symlink_to(bash)
    assert not (bin_dir / "grep").exists() and not (bin_dir / "sed").exists()
    return str(bin_dir)


def fake(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def run(tmp_path: Path, path: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    init = fake(tmp_path / "systemd", f'echo "init $#" > {tmp_path}/init-ran')
    appliance = fake(
        tmp_path / "appliance",
        f'printf "%s\\n" "$@" "mode=$APPLIANCE_MACHINE__CONTAINER_MODE" "creds=$CREDENTIALS_DIRECTORY" '
        f"> {tmp_path}/appliance-ran",
    )
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), str(init), str(appliance), *args],
        env={"PATH": path, "ENTRYPOINT_ROOT": str(tmp_path / "root"), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_systemd_mode_forwards_settings_and_gpu_variables(tmp_path: Path, image_path: str) -> None:
    secrets = tmp_path / "root" / "run" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "redis-password").write_text("pw")
    env = {
        "APPLIANCE_REDIS__URL": "redis://queue:6379/0",
        "APPLIANCE_MACHINE__TYPE": "gpu",
        "APPLIANCE_COMFYUI__COMMAND": '["/bin/comfyui", "--flag with space"]',
        "LD_LIBRARY_PATH": "/run/opengl-driver/lib:/usr/lib64",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "CUDA_VERSION": "12.4",
        "HOSTNAME": "not-forwarded",
    }
    proc = run(tmp_path, image_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "init-ran").read_text() == "init 0\n"
    written = (tmp_path / "root" / "etc" / "appliance" / "appliance.env").read_text().splitlines()
    assert sorted(written) == sorted(f"{k}={v}" for k, v in env.items() if k != "HOSTNAME")
    link = tmp_path / "root" / "run" / "credstore" / "redis-password"
    assert link.is_symlink() and os.readlink(link) == str(secrets / "redis-password")


def test_systemd_mode_without_secrets(tmp_path: Path, image_path: str) -> None:
    proc = run(tmp_path, image_path, {"APPLIANCE_HEALTH__PORT": "9191"})
    assert proc.returncode == 0, proc.stderr
    env_file = tmp_path / "root" / "etc" / "appliance" / "appliance.env"
    assert env_file.read_text() == "APPLIANCE_HEALTH__PORT=9191\n"
    assert list((tmp_path / "root" / "run" / "credstore").iterdir()) == []


def test_single_process_mode(tmp_path: Path, image_path: str) -> None:
    proc = run(tmp_path, image_path, {}, "machine", "--config", "/etc/x.toml")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "appliance-ran").read_text().splitlines() == [
        "machine",
        "--config",
        "/etc/x.toml",
        "mode=true",
        "creds=/run/secrets",
    ]
    assert not (tmp_path / "init-ran").exists()


def test_image_runs_this_script_with_its_own_sh() -> None:
    config = (REPO / "images" / "config.nix").read_text()
    assert '"${./entrypoint.sh}"' in config and '(lib.getExe\' bashInteractive "sh")' in config
    default = (REPO / "images" / "default.nix").read_text()
    # The tools the test above allows are the system group's.
    for tool in ("pkgs.bashInteractive", "pkgs.coreutils", "pkgs.systemd"):
        assert tool in default
    assert "grep" not in ENTRYPOINT.read_text().replace("grep`", "")
