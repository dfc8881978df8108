"""Checks of the Nix files that run without a Nix binary cache (docs/nix.md lists what needs one).

- every .nix file parses (`nix-instantiate --parse`);
- flake.lock pins nixpkgs exactly as docs/nix.md and the team reference say;
- flake.nix lists its outputs when nixpkgs is replaced by tests/nixos/stub (no packages are evaluated);
- with the real nixpkgs `lib` (set APPLIANCE_NIXPKGS_LIB to a checkout of nixpkgs or nixpkgs.lib), the NixOS
  module is evaluated with `lib.evalModules`: the unit drop-ins, credentials, assertions and the rendered
  settings, which must also validate as appliance settings and plan the very units the module starts; the
  module's build-time settings check is run as written; the package's install step is run in bash.

Needs nix-instantiate; skipped with the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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
        "tests/nixos/cluster.nix",
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
        assert out["checks"][system] == ["image-api", "package", "pytest", "vm"]
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
    config: dict[str, Any] | None = None,
    *,
    extra: dict[str, Any] | None = None,
    vm_test: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    assert LIB_PATH is not None
    args = ["tests/nixos/eval-module.nix", "--argstr", "libPath", str(Path(LIB_PATH).resolve())]
    if vm_test is not None:
        args += ["--argstr", "vmTest", vm_test, "--argstr", "node", str(node)]
    else:
        args += ["--argstr", "configJSON", json.dumps(config)]
    if extra is not None:
        args += ["--argstr", "extraJSON", json.dumps(extra)]
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


def validate_as_settings(settings: dict[str, Any]) -> Any:
    """The rendered settings must be what appliance.config accepts (catches key drift between the two)."""
    from appliance.config import Settings

    return Settings.model_validate(settings)


def instance_units(out: dict[str, Any]) -> list[str]:
    """The plan instances the module starts (wanted by appliance.target), as unit names."""
    return sorted(
        f"{name}.service"
        for name, unit in out["services"].items()
        if "appliance.target" in unit["wantedBy"] and name != "appliance-machine"
    )


def python_plan_units(settings: dict[str, Any], gpu_count: int) -> list[str]:
    from appliance.machine.plan import plan_from_settings

    return sorted(plan_from_settings(validate_as_settings(settings), gpu_count).units)


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
@pytest.mark.parametrize(
    ("config", "nvml_gpus"),
    [
        (GPU, 3),  # gpus = [ 0 2 ] on a machine where NVML counts 3 (defect 4)
        (GPU, 0),
        (dict(GPU, gpus=2), 4),
        ({**GPU, "gpus": [], "comfyui": {"command": ["c"], "acceleration": "cpu"}}, 0),
        ({**GPU, "settings": {"machine": {"gpus": [1]}}}, 2),  # settings decide, the units follow
        (API, 0),
    ],
)
def test_the_module_starts_the_units_the_supervisor_plans(config: dict[str, Any], nvml_gpus: int) -> None:
    """One plan: the module writes `gpus` into the settings, and appliance.machine.plan, reading those
    settings whatever NVML counts, names exactly the units the module links into appliance.target."""
    out = eval_module(config)
    assert out["failedAssertions"] == []
    assert instance_units(out) == python_plan_units(out["settings"], nvml_gpus)


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
    # A worker gets its own connector's key and no other (defect 9).
    assert services["appliance-worker@echo0"]["serviceConfig"]["LoadCredential"] == [""]
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
def test_the_http_api_unit_and_options() -> None:
    assert "appliance-api" not in eval_module(API)["services"]
    out = eval_module(
        {
            **API,
            "redis": {"passwordFile": "/run/secrets/redis-api"},
            "api": {"enable": True, "listen": "0.0.0.0", "port": 9443, "openFirewall": True, "processes": 2},
        }
    )
    assert out["failedAssertions"] == []
    unit = out["services"]["appliance-api"]
    assert "appliance.target" in unit["wantedBy"] and unit["overrideStrategy"] == "asDropin"
    assert unit["serviceConfig"]["LoadCredential"] == ["", "redis-password:/run/secrets/redis-api"]
    assert out["firewall"] == [9191, 9443]
    assert out["settings"]["api"] == {"host": "0.0.0.0", "port": 9443, "processes": 2}
    assert validate_as_settings(out["settings"]).api.processes == 2


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
def test_container_mode_tunables_yield_to_yours() -> None:
    """docs/nix.md: "a value of yours wins". The container-mode lifts are defaults, so an operator's own
    serviceConfig is no conflict and is what the unit gets (defect 11)."""
    gpu = {**GPU, "containerMode": True}
    out = eval_module(gpu)
    machine = out["services"]["appliance-machine"]["serviceConfig"]
    assert machine["MemoryDenyWriteExecute"] is False and machine["SystemCallFilter"] == [
        "",
        "@system-service",
    ]
    mine = {
        "MemoryDenyWriteExecute": True,
        "SystemCallFilter": ["@system-service", "~@privileged"],
        "LimitNOFILE": 4096,
        "TimeoutStopSec": "10min",
    }
    out = eval_module(gpu, extra={"systemd": {"services": {"appliance-machine": {"serviceConfig": mine}}}})
    assert out["failedAssertions"] == []
    machine = out["services"]["appliance-machine"]["serviceConfig"]
    assert {k: machine[k] for k in mine} == mine


@needs_nix
@needs_lib
def test_settings_win_over_typed_options() -> None:
    """The typed options are written at mkDefault: the same key in `settings` is no conflict, and it wins."""
    out = eval_module(
        {
            **GPU,
            "healthPort": 9191,
            "settings": {
                "health": {"port": 9999},
                "comfyui": {"base_port": 9000},
                "machine": {"type": "gpu"},
            },
        }
    )
    assert out["failedAssertions"] == []
    assert out["settings"]["health"]["port"] == 9999
    assert out["settings"]["comfyui"]["base_port"] == 9000


@needs_nix
@needs_lib
def test_build_time_settings_check_runs_the_package(tmp_path: Path) -> None:
    """config.toml is a runCommand that runs the package's `appliance config check` on the rendered settings;
    here its script runs as written, against this checkout, so a value the Nix type accepts but the
    application refuses fails the build with a message naming the key."""
    out = eval_module(API)
    check = out["configCheck"]
    assert check["tools"] == ["appliance-0.1.0"]
    assert 'appliance config check --no-open-files "$settings"' in check["buildCommand"]

    def build(settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        exe = bin_dir / "appliance"
        exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m appliance "$@"\n')
        exe.chmod(0o755)
        rendered = tmp_path / "appliance-settings.json"  # `config check` reads JSON as it reads TOML
        rendered.write_text(json.dumps(settings))
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "settings": str(rendered),
            "out": str(tmp_path / "out.toml"),
        }
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", check["buildCommand"]],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    ok = build(check["rendered"])
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out.toml").read_text()) == check["rendered"]
    bad = eval_module({**API, "settings": {"health": {"port": "high"}}})["configCheck"]["rendered"]
    failed = build(bad)
    assert failed.returncode == 2 and "health.port" in failed.stderr and "Traceback" not in failed.stderr


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
        ({"enable": True, "redis": {"url": "redis://:pw@h:6379/0"}}, "redis.url contains a password"),
        (
            {"enable": True, "settings": {"redis": {"password": "pw"}}},
            "settings: redis.password would be stored world-readable",
        ),
        (
            {"enable": True, "settings": {"connectors": {"openai": {"api_key": "sk"}}}},
            "settings: connectors.openai.api_key would be stored world-readable",
        ),
        (
            {"enable": True, "settings": {"storage": {"s3": {"secret_access_key": "x"}}}},
            "storage.s3.secret_access_key would be stored world-readable",
        ),
        (
            {"enable": True, "machineType": "gpu", "gpus": 1, "comfyui": {"command": ["c"], "cpu": True}},
            'Use services.appliance.comfyui.acceleration = "cpu"',
        ),
        ({"enable": True, "settings": {"bogus": 1}}, "unknown setting(s) bogus"),
        (
            {"enable": True, "settings": {"worker": {"drain_grace": 1}}},
            "unknown setting(s) worker.drain_grace",
        ),
        ({"enable": True, "connectors": {"opnai": {}}}, "unknown connector(s) opnai"),
        ({"enable": True, "settings": {"connectors": {"opnai": {}}}}, "unknown connector(s) opnai"),
        ({"enable": True, "redis": {"tls": {"enable": True}}}, "needs a rediss:// URL"),
        (
            {**GPU, "gpus": [0, 3], "comfyui": {"command": ["c"], "basePort": 65533}},
            "basePort 65533 + GPU index 3 is beyond port 65535",
        ),
        (
            {**GPU, "comfyui": {"command": ["c"], "models": {"checkpoints/a": "/m/a"}, "modelsDir": "/m"}},
            "set models or modelsDir, not both",
        ),
    ],
)
def test_assertions(config: dict[str, Any], message: str) -> None:
    out = eval_module(config)
    assert len(out["failedAssertions"]) == 1, out["failedAssertions"]
    assert message in out["failedAssertions"][0]


@needs_nix
@needs_lib
def test_redis_create_locally() -> None:
    out = eval_module({**API, "redis": {"createLocally": True, "passwordFile": "/run/secrets/redis"}})
    assert out["failedAssertions"] == []
    assert out["redisServers"]["appliance"] == {
        "enable": True,
        "user": "redis-appliance",
        "unixSocket": "/run/redis-appliance/redis.sock",
        "requirePassFile": "/run/secrets/redis",
    }
    assert out["settings"]["redis"]["url"] == "unix:///run/redis-appliance/redis.sock"
    assert out["extraGroups"]["appliance"] == ["redis-appliance"]
    for name, unit in out["services"].items():
        assert "redis-appliance.service" in unit["after"] and "redis-appliance.service" in unit["wants"], name
    validate_as_settings(out["settings"])


@needs_nix
@needs_lib
def test_comfyui_acceleration_models_and_environment() -> None:
    rocm = eval_module(
        {
            **GPU,
            "comfyui": {
                "command": ["c"],
                "acceleration": "rocm",
                "models": {"checkpoints/a.safetensors": "/srv/a.safetensors"},
                "customNodes": {"Impact": "/srv/impact"},
                "environment": {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"},
            },
            "environment": {"APPLIANCE_LOGGING__LEVEL": "DEBUG"},
            "environmentFile": "/run/secrets/appliance.env",
        }
    )
    assert rocm["failedAssertions"] == []
    comfy = rocm["services"]["appliance-comfyui@0"]
    assert comfy["serviceConfig"]["DeviceAllow"] == ["", "char-drm rw", "char-kfd rw"]
    assert comfy["serviceConfig"]["SupplementaryGroups"] == ["render", "video"]
    assert comfy["environment"] == {"APPLIANCE_LOGGING__LEVEL": "DEBUG", "HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    worker = rocm["services"]["appliance-worker@gpu0"]
    assert worker["environment"] == {"APPLIANCE_LOGGING__LEVEL": "DEBUG"}
    for name, unit in rocm["services"].items():
        assert unit["serviceConfig"]["EnvironmentFile"] == ["/run/secrets/appliance.env"], name
    settings = rocm["settings"]
    assert settings["comfyui"]["models_dir"].endswith("-appliance-comfyui-models")
    assert settings["comfyui"]["custom_nodes_dir"].endswith("-appliance-comfyui-custom-nodes")
    validate_as_settings(settings)
    cpu = eval_module({**GPU, "gpus": [], "comfyui": {"command": ["c"], "acceleration": "cpu"}})
    assert cpu["services"]["appliance-comfyui@0"]["serviceConfig"]["DeviceAllow"] == [""]
    assert cpu["settings"]["comfyui"]["cpu"] is True
    cuda = eval_module(GPU)
    # CUDA keeps the packaged unit's NVIDIA device list (no reset in the drop-in).
    assert "DeviceAllow" not in cuda["services"]["appliance-comfyui@0"]["serviceConfig"]


@needs_nix
@needs_lib
def test_module_documentation() -> None:
    out = eval_module({"enable": True})
    doc = Path(out["meta"]["doc"])
    assert doc.is_file() and doc.parent == ROOT / "nixos-modules"
    assert "services.appliance" in doc.read_text()


@needs_nix
@needs_lib
@pytest.mark.parametrize(
    ("node", "units"),
    [
        ("api", ["appliance-worker@echo0", "appliance-worker@echo1", "appliance-worker@openai0"]),
        ("gpu", ["appliance-comfyui@0", "appliance-worker@gpu0"]),
    ],
)
def test_vm_test_nodes_evaluate(node: str, units: list[str]) -> None:
    """The VM test's nodes pass the module's assertions and plan the units its script waits for."""
    out = eval_module(vm_test="cluster.nix", node=node)
    assert out["failedAssertions"] == []
    assert instance_units(out) == [f"{u}.service" for u in units]
    assert instance_units(out) == python_plan_units(out["settings"], 0)
    if node == "gpu":
        # The test's own WatchdogSec= is merged with the module's drop-in, and wins.
        assert out["services"]["appliance-comfyui@0"]["serviceConfig"]["WatchdogSec"] == "15s"


# --- the package's install step, run -----------------------------------------------------------------------


@needs_nix
@needs_lib
def test_package_install_step_renders_every_unit(tmp_path: Path) -> None:
    """nix/package.nix's postInstall, as evaluated by Nix, run in bash against this checkout: it must write
    every packaged unit (appliance.target included, defect 1) with the executable filled in."""
    from appliance.units import install as inst

    assert LIB_PATH is not None
    step = nix_eval(
        "tests/nixos/eval-package.nix",
        "--argstr",
        "libPath",
        str(Path(LIB_PATH).resolve()),
        "--argstr",
        "python",
        sys.executable,
    )
    out = tmp_path / "out"
    site = out / step["sitePackages"]
    site.mkdir(parents=True)
    (site / "appliance").symlink_to(ROOT / "appliance")
    (out / "bin").mkdir()
    (out / "bin" / "appliance").write_text("#!/bin/sh\n")
    (out / "bin" / "appliance").chmod(0o755)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", step["postInstall"]],
        env={"out": str(out), "PYTHONPATH": "", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    units = out / "lib" / "systemd" / "system"
    expected = sorted(set(inst.packaged_files()) - set(inst.SYSTEM_FILES))
    assert sorted(p.name for p in units.iterdir()) == expected
    for path in units.iterdir():
        assert inst.BIN_PLACEHOLDER not in path.read_text(), path.name
    assert (out / "lib/tmpfiles.d/appliance.conf").is_file() and (
        out / "lib/sysusers.d/appliance.conf"
    ).is_file()


# --- the module against the packaged units ---------------------------------------------------------------------


def test_module_unit_names_exist_in_the_package() -> None:
    """The names the module drops into are the package's unit files (appliance/units), by way of the contract."""
    contract = json.loads((ROOT / "nix" / "contract.json").read_text())
    for unit in contract["units"].values():
        if unit.endswith((".service", ".target")):
            assert (UNITS_DIR / unit).is_file(), unit
    for conf in ["tmpfiles.conf", "sysusers.conf"]:
        assert (UNITS_DIR / conf).is_file()
    module = (ROOT / "nixos-modules" / "appliance.nix").read_text()
    assert "lib.importJSON ../nix/contract.json" in module
    # No hand-copied application facts left in the module.
    for fact in ['"openai"', '"redis-password"', "8188", "9090", '"replicate"']:
        assert fact not in module, fact
    for unit_file in UNITS_DIR.glob("*.service"):
        text = unit_file.read_text()
        if unit_file.name == "appliance-target-down.service":
            # It stops appliance.target through systemd's bus: root, and never touches the appliance's data.
            assert "User=" not in text, unit_file.name
            continue
        # The module declares exactly this user and group.
        assert "User=appliance" in text and "Group=appliance" in text, unit_file.name
    package = (ROOT / "nix" / "package.nix").read_text()
    assert "units render" in package and "substituteInPlace" not in package


# --- the VM test script, the test suite's Nix environment, the GPU image's Python -----------------------------

VM_SCRIPT = """
let
  lib = import (/. + LIB + "/lib");
  pkgs = import ./tests/nixos/stub/pkgs.nix { inherit lib; };
  self = {
    packages.x86_64-linux.default = pkgs.appliance;
    nixosModules.default = { };
  };
in
(import ./tests/nixos/cluster.nix { inherit self pkgs; }).testScript
"""


@needs_nix
@needs_lib
def test_vm_test_script_compiles_and_waits_for_the_members() -> None:
    """The VM test's Python, as Nix renders it, compiles; stopping appliance.target is always followed by a wait
    until each member is inactive (`systemctl stop` returns before PartOf= members are down: defect 3); the
    watchdog is proven by systemd's verdict and NRestarts, not by grepping the journal."""
    import ast

    assert LIB_PATH is not None
    script = nix_eval("-E", VM_SCRIPT.replace("LIB", json.dumps(str(Path(LIB_PATH).resolve()))))
    tree = ast.parse(script)
    functions = {
        f.name: ast.get_source_segment(script, f) or ""
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
    }
    stop = functions["stop_target_and_wait"]
    assert stop.index("systemctl stop appliance.target") < stop.index("ActiveState") < stop.index("inactive")
    # The only stop of the target is that helper's.
    assert script.count('succeed("systemctl stop appliance.target")') == 1
    assert 'succeed("systemctl stop appliance.target")' in stop
    assert "require_unit_state" not in script
    assert "journalctl" not in script
    assert "NRestarts" in script and '.get("watchdog", 0)' in functions["watchdog_kills"]


def test_checks_pytest_has_the_test_dependencies() -> None:
    """checks.pytest runs the suite with pyproject's test dependencies (moto for tests/worker/test_storage.py,
    pytest-timeout for `timeout = 600`: defect 8); only the lint and browser tools are left out."""
    import tomllib

    test_group = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "test"
    ]
    names = {re.split(r"[<>=\[~ ]", req, maxsplit=1)[0].lower() for req in test_group}
    # Lint tools: CI runs them; nixpkgs has no import-linter (tests/test_layers.py skips without it).
    not_in_sandbox = {"playwright", "bandit", "ruff", "mypy", "import-linter"}
    package = (ROOT / "nix" / "package.nix").read_text()
    pytest_env = package[package.index("pytest =") :]
    for name in sorted(names - not_in_sandbox):
        in_optional = name in ("openai", "boto3") and "optionalDependencies" in pytest_env
        assert f"ps.{name}" in pytest_env or in_optional, name


def test_gpu_python_carries_comfyuis_requirements() -> None:
    """The fallback GPU Python (no comfyui in the pin) must import what ComfyUI imports at start, not torch
    alone (defect 7). The names are ComfyUI's requirements.txt as nixpkgs attributes."""
    default = (ROOT / "images" / "default.nix").read_text()
    listed = set(
        re.findall(r'^\s+"([a-z0-9-]+)"$', default[default.index("comfyuiRequirements = [") :], re.M)
    )
    for required in [
        "torch",
        "torchvision",
        "torchaudio",
        "torchsde",
        "einops",
        "transformers",
        "tokenizers",
        "sentencepiece",
        "safetensors",
        "aiohttp",
        "yarl",
        "pyyaml",
        "pillow",
        "scipy",
        "tqdm",
        "psutil",
        "kornia",
        "spandrel",
        "av",
        "alembic",
        "sqlalchemy",
        "pydantic",
        "pydantic-settings",
        "comfyui-frontend-package",
        "comfyui-workflow-templates",
        "comfyui-embedded-docs",
    ]:
        assert required in listed, required
