"""`appliance units install|list|uninstall` against a temporary root: what lands where, and what it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.units import install as inst

GPU_PLAN = {
    "machine_id": "m1",
    "machine_type": "gpu",
    "services": [
        {
            "name": "comfyui@0",
            "unit": "appliance-comfyui@0.service",
            "kind": "comfyui",
            "gpu": 0,
            "port": 8188,
        },
        {"name": "worker@gpu0", "unit": "appliance-worker@gpu0.service", "kind": "worker", "slot": "gpu0"},
        {
            "name": "comfyui@1",
            "unit": "appliance-comfyui@1.service",
            "kind": "comfyui",
            "gpu": 1,
            "port": 8189,
        },
        {"name": "worker@gpu1", "unit": "appliance-worker@gpu1.service", "kind": "worker", "slot": "gpu1"},
    ],
}
API_PLAN = {
    "machine_type": "api",
    "services": [{"unit": "appliance-worker@openai0.service"}, {"unit": "appliance-worker@echo0.service"}],
}
BIN = "/opt/appliance/bin/appliance"


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "units", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    exe = tmp_path / BIN.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return tmp_path


def install(root: Path, plan: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(plan))
    proc = cli("install", "--root", str(root), "--bin", BIN, "--plan-json", str(plan_file), *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def tree(root: Path) -> dict[str, str]:
    """Every file and link the installer manages under etc/, with a link's target or a file's first line."""
    out = {}
    paths = [
        p for d in ("systemd", "tmpfiles.d", "sysusers.d", "appliance") for p in (root / "etc" / d).rglob("*")
    ]
    for path in sorted(paths):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text().splitlines()[0]
    return out


def test_gpu_plan_binds_each_worker_to_its_comfyui(root: Path) -> None:
    install(root, GPU_PLAN, "--enable")
    units = root / "etc/systemd/system"
    for i in (0, 1):
        dropin = (units / f"appliance-worker@gpu{i}.service.d/10-comfyui.conf").read_text()
        assert f"BindsTo=appliance-comfyui@{i}.service" in dropin
        assert f"After=appliance-comfyui@{i}.service" in dropin
        assert (
            os.readlink(units / f"appliance.target.wants/appliance-comfyui@{i}.service")
            == "/etc/systemd/system/appliance-comfyui@.service"
        )
        assert (
            os.readlink(units / f"appliance.target.wants/appliance-worker@gpu{i}.service")
            == "/etc/systemd/system/appliance-worker@.service"
        )
    assert (
        os.readlink(units / "multi-user.target.wants/appliance.target")
        == "/etc/systemd/system/appliance.target"
    )
    for name in ("appliance-machine.service", "appliance-worker@.service", "appliance-comfyui@.service"):
        text = (units / name).read_text()
        assert inst.BIN_PLACEHOLDER not in text and f"ExecStart={BIN} " in text
    assert (root / "etc/tmpfiles.d/appliance.conf").is_file()
    # The service user exists in the root (systemd-sysusers ran there).
    assert any(line.startswith("appliance:") for line in (root / "etc/passwd").read_text().splitlines())


def test_api_slots_get_no_binding_and_reinstall_removes_stale_files(root: Path) -> None:
    install(root, GPU_PLAN, "--container-mode", "--config", "/etc/appliance/config.toml")
    env_file = root / "etc/appliance/appliance.env"
    env_file.write_text("APPLIANCE_REDIS_URL=redis://10.0.0.1:6379/0\n")
    install(root, API_PLAN)
    files = tree(root)
    assert not [p for p in files if "comfyui@0" in p or "gpu" in p or p.endswith(".d")], files
    assert "etc/systemd/system/appliance-machine.service.d/50-container-mode.conf" not in files
    assert "etc/systemd/system/appliance-.service.d/20-config.conf" not in files
    assert "etc/systemd/system/multi-user.target.wants/appliance.target" not in files
    assert sorted(p.rsplit("/", 1)[1] for p in files if "appliance.target.wants/" in p) == [
        "appliance-worker@echo0.service",
        "appliance-worker@openai0.service",
    ]
    # The env file belongs to the operator once it exists.
    assert env_file.read_text() == "APPLIANCE_REDIS_URL=redis://10.0.0.1:6379/0\n"


def loaded_credentials(units: Path, instance: str) -> set[str]:
    """The LoadCredential= ids of one worker instance: the template's plus its drop-ins' (a list setting that
    drop-ins append to, systemd.exec(5)); an empty assignment would reset the list."""
    ids: list[str] = []
    files = [units / "appliance-worker@.service"]
    files += sorted((units / f"appliance-worker@{instance}.service.d").glob("*.conf"))
    for path in files:
        for line in path.read_text().splitlines():
            if line.startswith("LoadCredential="):
                value = line.removeprefix("LoadCredential=")
                ids = ids + [value.split(":", 1)[0]] if value else []
    return set(ids)


def test_each_worker_loads_only_its_own_connectors_key(root: Path) -> None:
    """Issue 11, defect 9: the echo worker gets no API key, the openai worker only openai-api-key, GPU workers
    none; no worker can read another connector's key."""
    plan = {
        "services": [
            {"unit": "appliance-worker@openai0.service"},
            {"unit": "appliance-worker@openai1.service"},
            {"unit": "appliance-worker@echo0.service"},
            {"unit": "appliance-worker@replicate0.service"},
            {"unit": "appliance-worker@gpu0.service"},
        ]
    }
    install(root, plan, "--no-user")
    units = root / "etc/systemd/system"
    shared = {"redis-password", "s3-secret-access-key"}
    assert loaded_credentials(units, "echo0") == shared
    assert loaded_credentials(units, "gpu0") == shared
    assert loaded_credentials(units, "openai0") == shared | {"openai-api-key"}
    assert loaded_credentials(units, "openai1") == shared | {"openai-api-key"}
    assert loaded_credentials(units, "replicate0") == shared | {"replicate-api-key"}
    # The ids are appliance.secrets' (the worker reads $CREDENTIALS_DIRECTORY/<id>), as in nix/contract.json.
    contract = json.loads((Path(__file__).parents[2] / "nix/contract.json").read_text())
    assert contract["credentials"]["connectors"] == {
        "openai": "openai-api-key",
        "replicate": "replicate-api-key",
        "runpod": "runpod-api-key",
    }
    # A re-install with another plan takes the old instances' keys away.
    install(root, API_PLAN, "--no-user")
    assert not (units / "appliance-worker@replicate0.service.d").exists()
    assert loaded_credentials(units, "openai0") == shared | {"openai-api-key"}
    assert loaded_credentials(units, "echo0") == shared


def test_container_mode_and_config_dropins(root: Path) -> None:
    install(root, API_PLAN, "--container-mode", "--config", "/etc/appliance/config.toml")
    units = root / "etc/systemd/system"
    container = (units / "appliance-machine.service.d/50-container-mode.conf").read_text()
    assert (
        "FailureAction=exit" in container
        and f"FailureActionExitStatus={inst.CONTAINER_EXIT_STATUS}" in container
    )
    assert (
        "Environment=APPLIANCE_CONFIG=/etc/appliance/config.toml"
        in (units / "appliance-.service.d/20-config.conf").read_text()
    )


def test_list_writes_nothing_and_matches_install(root: Path) -> None:
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(GPU_PLAN))
    listed = cli("list", "--root", str(root), "--bin", BIN, "--plan-json", str(plan_file), "--json")
    assert listed.returncode == 0, listed.stderr
    assert not (root / "etc").exists()
    installed = install(root, GPU_PLAN, "--no-user")
    assert [f["path"] for f in json.loads(listed.stdout)] == installed.stdout.split()


def test_plan_from_stdin(root: Path) -> None:
    proc = cli("install", "--root", str(root), "--bin", BIN, "--plan-json", "-", stdin=json.dumps(API_PLAN))
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/systemd/system/appliance.target.wants/appliance-worker@openai0.service").is_symlink()


def test_uninstall_removes_everything_but_the_env_file(root: Path) -> None:
    install(root, GPU_PLAN, "--enable", "--container-mode")
    proc = cli("uninstall", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert list(tree(root)) == ["etc/appliance/appliance.env"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bin", "bin/appliance"], "must be an absolute path"),
        (["--bin", "/root/venv/bin/appliance"], "ProtectHome"),
        (["--bin", "/usr/local/bin/appliance"], "no executable file there"),
        ([], "--bin PATH is required with --root"),
    ],
)
def test_bad_bin_is_one_clear_error(root: Path, argv: list[str], message: str) -> None:
    proc = cli("install", "--root", str(root), *argv)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (root / "etc").exists()


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"services": [{"unit": "sshd.service"}]}, "expected appliance-comfyui@<gpu>.service"),
        ({"services": [{"unit": "appliance-comfyui@gpu0.service"}]}, "GPU index"),
        ({"services": [{"unit": "appliance-worker@../x.service"}]}, "expected appliance-comfyui"),
        # worker slots are parsed by appliance.identity, as the worker parses its own --slot
        ({"services": [{"unit": "appliance-worker@openai.service"}]}, "<connector><N>"),
        ({"services": [{"unit": "appliance-worker@comfyui0.service"}]}, "ComfyUI workers use gpu<N> slots"),
        ({"machine_type": "gpu"}, "services"),
    ],
)
def test_bad_plan_is_one_clear_error(root: Path, plan: dict, message: str) -> None:
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(plan))
    proc = cli("install", "--root", str(root), "--bin", BIN, "--plan-json", str(plan_file))
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (root / "etc").exists()


def test_missing_plan_file(root: Path) -> None:
    proc = cli("install", "--root", str(root), "--bin", BIN, "--plan-json", str(root / "nope.json"))
    assert proc.returncode != 0 and "nope.json" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_from_this_machine(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("APPLIANCE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("APPLIANCE_MACHINE_TYPE", "api")
    monkeypatch.setenv("APPLIANCE_ECHO_ENABLED", "true")
    monkeypatch.setenv("APPLIANCE_ECHO_SLOTS", "2")
    out = cli("install", "--root", str(root), "--bin", BIN, "--from-machine-plan")
    assert out.returncode == 0, out.stderr
    wants = sorted(p.name for p in (root / "etc/systemd/system/appliance.target.wants").iterdir())
    assert "appliance-worker@echo0.service" in wants and "appliance-worker@echo1.service" in wants
    monkeypatch.setenv("APPLIANCE_MACHINE_TYPE", "gpu")  # no GPU here and no CPU mode: a clear error
    bad = cli("install", "--root", str(root), "--bin", BIN, "--from-machine-plan")
    assert bad.returncode == 2 and "machine plan" in bad.stderr and "Traceback" not in bad.stderr


def test_relative_root_is_taken_from_the_working_directory(root: Path) -> None:
    """`--root DIR` relative to where the command runs: everything lands there, the system user included."""
    (root / "plan.json").write_text(json.dumps(API_PLAN))
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "units", "install", "--root", root.name, "--bin", BIN]
        + ["--plan-json", str(root / "plan.json")],
        capture_output=True,
        text=True,
        check=False,
        cwd=root.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/systemd/system/appliance.target").is_file()
    assert all(line.startswith(str(root)) for line in proc.stdout.splitlines()), proc.stdout


def test_documentation_points_at_the_doc_the_package_installs(root: Path) -> None:
    """Documentation= names <prefix>/share/doc/appliance/systemd.md, where pyproject's data-files put
    docs/systemd.md beside <prefix>/bin/appliance (the nspawn tests open it in a real install)."""
    install(root, API_PLAN, "--no-user")
    units = root / "etc/systemd/system"
    for unit in ("appliance.target", "appliance-machine.service", "appliance-worker@.service"):
        text = (units / unit).read_text()
        assert "Documentation=file:/opt/appliance/share/doc/appliance/systemd.md\n" in text, unit
        assert "@APPLIANCE_" not in text, unit
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"share/doc/appliance" = ["docs/systemd.md"]' in pyproject
