"""Checks of the Nix files that run without a Nix binary cache (docs/nix.md lists what needs one).

- every .nix file parses (`nix-instantiate --parse`);
- flake.lock pins nixpkgs exactly as docs/nix.md and the team reference say;
- flake.nix lists its outputs when nixpkgs is replaced by tests/nixos/stub (no packages are evaluated);
- with the real nixpkgs `lib` (set APPLIANCE_NIXPKGS_LIB to a checkout of nixpkgs or nixpkgs.lib), the NixOS
  module is evaluated with `lib.evalModules`: the unit drop-ins, credentials, assertions and the rendered
  settings, which must also validate as appliance settings.

Needs nix-instantiate; skipped with the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NIX_DIRS = ["flake.nix", "nix", "nixos-modules", "images", "tests/nixos"]
UNITS_DIR = ROOT / "appliance" / "units"

PINNED_NIXPKGS = {
    "locked": {
        "lastModified": 1783703440,
        "narHash": "sha256-O3/YajjWo001VUIgD8BwaRdSNLUFe7nZ1qV5TwhRBcw=",
        "owner": "NixOS",
        "repo": "nixpkgs",
        "rev": "8f0500b9660505dc3cb647775fe9a978a74b5283",
        "type": "github",
    },
    "original": {"owner": "NixOS", "ref": "nixos-26.05", "repo": "nixpkgs", "type": "github"},
}

NIX_INSTANTIATE = shutil.which("nix-instantiate")
needs_nix = pytest.mark.skipif(
    NIX_INSTANTIATE is None, reason="nix-instantiate is not installed (apt: nix-bin)"
)

LIB_PATH = os.environ.get("APPLIANCE_NIXPKGS_LIB")
needs_lib = pytest.mark.skipif(
    not (LIB_PATH and (Path(LIB_PATH) / "lib" / "default.nix").is_file()),
    reason="APPLIANCE_NIXPKGS_LIB does not point at a checkout of nixpkgs or nixpkgs.lib "
    "(a directory with lib/default.nix); the module evaluation needs the real nixpkgs lib",
)


def nix_files() -> list[Path]:
    files: list[Path] = []
    for entry in NIX_DIRS:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.nix"))
    return files


def nix_eval(*args: str) -> Any:
    """`nix-instantiate --eval --strict --json` in the repo root; evaluation only, nothing is built."""
    assert NIX_INSTANTIATE is not None
    env = dict(os.environ, NIX_PATH="")
    proc = subprocess.run(
        [NIX_INSTANTIATE, "--eval", "--strict", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- parsing and the lock file -------------------------------------------------------------------------------


def test_nix_files_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in nix_files()}
    for required in [
        "flake.nix",
        "nix/package.nix",
        "nixos-modules/appliance.nix",
        "images/default.nix",
        "tests/nixos/api.nix",
        "tests/nixos/gpu.nix",
    ]:
        assert required in names


@needs_nix
@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nix_file_parses(path: Path) -> None:
    assert NIX_INSTANTIATE is not None
    proc = subprocess.run(
        [NIX_INSTANTIATE, "--parse", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_flake_lock_pins_nixpkgs_exactly() -> None:
    lock = json.loads((ROOT / "flake.lock").read_text())
    assert lock["version"] == 7
    assert lock["root"] == "root"
    assert lock["nodes"]["root"] == {"inputs": {"nixpkgs": "nixpkgs"}}
    assert lock["nodes"]["nixpkgs"] == PINNED_NIXPKGS
    # Only nixpkgs: every further input would need a pin copied from a real lock file.
    assert set(lock["nodes"]) == {"root", "nixpkgs"}


@needs_nix
def test_flake_input_matches_lock() -> None:
    inputs = nix_eval("-E", "(import ./flake.nix).inputs")
    assert inputs == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-26.05"}}


# --- flake outputs with the stub nixpkgs ----------------------------------------------------------------------

OUTPUT_NAMES = """
let
  flake = import ./flake.nix;
  nixpkgs = import ./tests/nixos/stub/nixpkgs.nix;
  self = flake.outputs { inherit self nixpkgs; };
  names = builtins.mapAttrs (_: builtins.attrNames);
in {
  top = builtins.attrNames self;
  packages = names self.packages;
  checks = names self.checks;
  apps = names self.apps;
  devShells = names self.devShells;
  formatter = builtins.attrNames self.formatter;
  nixosModules = builtins.attrNames self.nixosModules;
  nixosModuleIsFunction = builtins.isFunction self.nixosModules.default;
}
"""


@needs_nix
def test_flake_output_names() -> None:
    out = nix_eval("-E", OUTPUT_NAMES)
    assert out["top"] == ["apps", "checks", "devShells", "formatter", "nixosModules", "overlays", "packages"]
    systems = ["aarch64-linux", "x86_64-linux"]
    assert sorted(out["packages"]) == systems
    assert out["packages"]["x86_64-linux"] == ["appliance", "default", "image-api", "image-base", "image-gpu"]
    # CUDA is x86_64 only.
    assert out["packages"]["aarch64-linux"] == ["appliance", "default", "image-api", "image-base"]
    for system in systems:
        assert out["checks"][system] == ["image-api", "package", "pytest", "vm-api", "vm-gpu"]
        assert out["apps"][system] == ["default"]
        assert out["devShells"][system] == ["default"]
    assert out["formatter"] == systems
    assert out["nixosModules"] == ["appliance", "default"]
    assert out["nixosModuleIsFunction"] is True


@needs_nix
def test_stub_nixpkgs_refuses_packages() -> None:
    """A package evaluated through the stub fails loudly, so the names test cannot pass by accident."""
    assert NIX_INSTANTIATE is not None
    expr = OUTPUT_NAMES.replace(
        "top = builtins.attrNames self;", "top = self.packages.x86_64-linux.default.name;"
    )
    proc = subprocess.run(
        [NIX_INSTANTIATE, "--eval", "--strict", "-E", expr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "stub nixpkgs has no packages" in proc.stderr


# --- the NixOS module with the real nixpkgs lib ----------------------------------------------------------------


def eval_module(
    config: dict[str, Any] | None = None, *, vm_test: str | None = None, node: str | None = None
) -> dict[str, Any]:
    assert LIB_PATH is not None
    args = ["tests/nixos/eval-module.nix", "--argstr", "libPath", str(Path(LIB_PATH).resolve())]
    if vm_test is not None:
        args += ["--argstr", "vmTest", vm_test, "--argstr", "node", str(node)]
    else:
        args += ["--argstr", "configJSON", json.dumps(config)]
    result: dict[str, Any] = nix_eval(*args)
    return result


GPU = {
    "enable": True,
    "machineType": "gpu",
    "gpus": [0, 2],
    "comfyui": {"command": ["comfy"]},
    "redis": {"url": "redis://queue:6379/0", "passwordFile": "/run/secrets/redis"},
}
API = {
    "enable": True,
    "machineType": "api",
    "openFirewall": True,
    "healthPort": 9191,
    "connectors": {"openai": {"slots": 2, "apiKeyFile": "/run/secrets/openai"}, "echo": {"slots": 1}},
    "settings": {"worker": {"drain_grace_s": 60}},
}


def validate_as_settings(settings: dict[str, Any]) -> None:
    """The rendered settings must be what appliance.config accepts (catches key drift between the two)."""
    from appliance.config import Settings

    Settings.model_validate(settings)


@needs_nix
@needs_lib
def test_gpu_machine_units() -> None:
    out = eval_module(GPU)
    assert out["failedAssertions"] == []
    services = out["services"]
    assert sorted(services) == [
        "appliance-comfyui@0",
        "appliance-comfyui@2",
        "appliance-machine",
        "appliance-onfailure@",
        "appliance-worker@gpu0",
        "appliance-worker@gpu2",
    ]
    for name, unit in services.items():
        # Every unit is a drop-in on the packaged unit file.
        assert unit["overrideStrategy"] == "asDropin", name
    for gpu in (0, 2):
        worker = services[f"appliance-worker@gpu{gpu}"]
        assert worker["wantedBy"] == ["appliance.target"]
        assert worker["bindsTo"] == [f"appliance-comfyui@{gpu}.service"]
        assert services[f"appliance-comfyui@{gpu}"]["wantedBy"] == ["appliance.target"]
        assert worker["serviceConfig"]["LoadCredential"] == ["", "redis-password:/run/secrets/redis"]
    assert out["targets"]["appliance"]["wantedBy"] == ["multi-user.target"]
    # The units' User=/Group=appliance exist on NixOS.
    assert out["users"] == {"appliance": "appliance"} and out["groups"] == ["appliance"]
    assert out["packages"] == out["tmpfiles"] == ["appliance-0.1.0"]
    assert out["etc"]["appliance/appliance.env"] == "APPLIANCE_CONFIG=/etc/appliance/config.toml\n"
    settings = out["settings"]
    assert settings["machine"]["type"] == "gpu"
    assert settings["comfyui"]["command"] == ["comfy"]
    assert settings["redis"] == {"url": "redis://queue:6379/0"}
    assert out["settingsHaveNull"] is False
    validate_as_settings(settings)


@needs_nix
@needs_lib
def test_api_machine_units_and_credentials() -> None:
    out = eval_module(API)
    assert out["failedAssertions"] == []
    services = out["services"]
    assert {"appliance-worker@openai0", "appliance-worker@openai1", "appliance-worker@echo0"} <= set(services)
    assert not any(name.startswith("appliance-comfyui") for name in services)
    openai = services["appliance-worker@openai0"]["serviceConfig"]
    assert openai["LoadCredential"] == ["", "openai-api-key:/run/secrets/openai"]
    # Above the 60 s drain grace from settings.
    assert openai["TimeoutStopSec"] == "90s"  # drain grace 60 s + 30 s to stop the connector and hand back
    # The supervisor never gets API keys.
    assert services["appliance-machine"]["serviceConfig"]["LoadCredential"] == [""]
    assert out["firewall"] == [9191]
    settings = out["settings"]
    assert settings["connectors"]["openai"] == {"enabled": True, "slots": 2, "concurrency": 1}
    assert "api_key" not in json.dumps(settings)
    validate_as_settings(settings)


@needs_nix
@needs_lib
def test_credential_ids_match_the_application() -> None:
    from appliance.secrets import CREDENTIALS

    out = eval_module(
        dict(API, redis={"passwordFile": "/p"}, extraCredentials={"s3-secret-access-key": "/s"})
    )
    ids = {
        entry.split(":", 1)[0]
        for unit in out["services"].values()
        for entry in unit["serviceConfig"].get("LoadCredential", [])
        if entry
    }
    assert ids == {"redis-password", "openai-api-key", "s3-secret-access-key"}
    assert ids <= set(CREDENTIALS.values())


@needs_nix
@needs_lib
def test_container_mode_runs_only_the_supervisor() -> None:
    out = eval_module(dict(API, containerMode=True))
    assert sorted(out["services"]) == ["appliance-machine", "appliance-onfailure@"]
    assert (
        "openai-api-key:/run/secrets/openai"
        in out["services"]["appliance-machine"]["serviceConfig"]["LoadCredential"]
    )
    assert out["settings"]["machine"]["container_mode"] is True


@needs_nix
@needs_lib
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"enable": True, "machineType": "gpu", "comfyui": {"command": ["c"]}}, "gpus is empty"),
        ({"enable": True, "machineType": "gpu", "gpus": 1}, "neither comfyui.package nor comfyui.command"),
        (
            {"enable": True, "machineType": "gpu", "gpus": [1, 1], "comfyui": {"command": ["c"]}},
            "lists an index twice",
        ),
        ({"enable": True, "redis": {"url": "redis://:pw@h:6379/0", "passwordFile": "/p"}}, "both inline"),
        (
            {"enable": True, "redis": {"passwordFile": "/p"}, "settings": {"redis": {"password": "pw"}}},
            "both inline",
        ),
        (
            {
                "enable": True,
                "connectors": {"openai": {"apiKeyFile": "/k"}},
                "settings": {"connectors": {"openai": {"api_key": "sk"}}},
            },
            "connectors.openai: the API key is given both",
        ),
        ({"enable": True, "connectors": {"opnai": {}}}, "unknown connector(s) opnai"),
        ({"enable": True, "redis": {"tls": {"enable": True}}}, "needs a rediss:// URL"),
    ],
)
def test_assertions(config: dict[str, Any], message: str) -> None:
    out = eval_module(config)
    assert len(out["failedAssertions"]) == 1, out["failedAssertions"]
    assert message in out["failedAssertions"][0]


@needs_nix
@needs_lib
def test_password_in_url_warns() -> None:
    out = eval_module({"enable": True, "redis": {"url": "redis://:pw@h:6379/0"}})
    assert out["failedAssertions"] == []
    assert any("world-readable" in w for w in out["warnings"])


@needs_nix
@needs_lib
@pytest.mark.parametrize(
    ("vm_test", "node", "units"),
    [
        ("api.nix", "api", {"appliance-worker@echo0", "appliance-worker@echo1", "appliance-worker@openai0"}),
        ("gpu.nix", "gpu", {"appliance-comfyui@0", "appliance-worker@gpu0"}),
    ],
)
def test_vm_test_nodes_evaluate(vm_test: str, node: str, units: set[str]) -> None:
    """The VM tests' appliance settings pass the module's assertions and plan the units their scripts wait for."""
    out = eval_module(vm_test=vm_test, node=node)
    assert out["failedAssertions"] == []
    assert units <= set(out["services"])
    validate_as_settings(out["settings"])


# --- the module against the packaged units ---------------------------------------------------------------------


def test_module_unit_names_exist_in_the_package() -> None:
    """The names the module drops into are the package's unit files (appliance/units)."""
    module = (ROOT / "nixos-modules" / "appliance.nix").read_text()
    for unit in [
        "appliance.target",
        "appliance-machine.service",
        "appliance-comfyui@.service",
        "appliance-worker@.service",
        "appliance-onfailure@.service",
        "tmpfiles.conf",
        "sysusers.conf",
    ]:
        assert (UNITS_DIR / unit).is_file(), unit
    for reference in [
        'unitName "worker@',
        'unitName "comfyui@',
        "appliance-machine",
        '"appliance-onfailure@"',
        "systemd.targets.appliance",
    ]:
        assert reference in module
    # The package substitutes this placeholder in postInstall; the units must still carry it.
    for unit_file in UNITS_DIR.glob("*.service"):
        text = unit_file.read_text()
        assert "ExecStart=@APPLIANCE_BIN@ " in text, unit_file.name
        if unit_file.name == "appliance-target-down.service":
            # It stops appliance.target through systemd's bus: root, and never touches the appliance's data.
            assert "User=" not in text, unit_file.name
            continue
        # The module declares exactly this user and group.
        assert "User=appliance" in text and "Group=appliance" in text, unit_file.name
    package = (ROOT / "nix" / "package.nix").read_text()
    for conf in ["tmpfiles.conf", "sysusers.conf"]:
        assert f"appliance/units/{conf}" in package
