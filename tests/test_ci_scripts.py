"""The deployment and security scripts (scripts/, .ci/security.sh, .github/workflows/), run as CI runs them.

Image archives are real tar files built here (docker-archive and OCI layout), secrets are planted in a real git
work tree, and every script runs as a subprocess; nothing here needs Nix, a registry or ssh.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )


def run_bytes(argv: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, cwd=ROOT, check=False, timeout=120)


# --- synthetic image archives ---------------------------------------------------------------------------------


def layer_tar(name: str, size: int) -> bytes:
    """A layer: a tar holding one file of `size` pseudo-random bytes (distinct per name)."""
    content = b"".join(hashlib.sha256(f"{name}{i}".encode()).digest() for i in range(size // 32 + 1))[:size]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"nix/store/{name}/data")
        info.size, info.mtime = len(content), 1
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1
    tar.addfile(info, io.BytesIO(data))


def image_config(layers: list[bytes], tag: str) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [f"IMAGE={tag}"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
        }
    ).encode()


def docker_archive(
    path: Path, layers: list[bytes], tag: str, *, compress: bool = False, manifest_last: bool = True
) -> Path:
    """What `docker save` and dockerTools write: <id>/layer.tar, <config>.json, manifest.json."""
    config = image_config(layers, tag)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = [f"{hashlib.sha256(x).hexdigest()}/layer.tar" for x in layers]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [f"{tag}:latest"], "Layers": names}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if not manifest_last:
            add(tar, "manifest.json", manifest)
        for name, data in zip(names, layers, strict=True):
            add(tar, name, data)
        add(tar, config_name, config)
        if manifest_last:  # streamLayeredImage writes the manifest at the end
            add(tar, "manifest.json", manifest)
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def oci_archive(path: Path, layers: list[bytes], tag: str) -> Path:
    """OCI image layout with gzip-compressed layer blobs (identity stays the uncompressed diff id)."""
    blobs = {}
    descriptors = []
    for layer in layers:
        blob = gzip.compress(layer, mtime=0)
        blobs[sha(blob)] = blob
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(blob),
                "size": len(blob),
            }
        )
    config = image_config(layers, tag)
    blobs[sha(config)] = config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    blobs[sha(manifest)] = manifest
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(manifest),
                    "size": len(manifest),
                }
            ],
        }
    )
    with tarfile.open(path, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(tar, "index.json", index.encode())
        for digest, blob in blobs.items():
            add(tar, f"blobs/sha256/{digest.split(':')[1]}", blob)
    return path


SYSTEM, DEPS, APP = layer_tar("system", 300_000), layer_tar("deps", 120_000), layer_tar("app", 20_000)
API_SDK, CUDA = layer_tar("api-sdk", 50_000), layer_tar("cuda", 700_000)


def reuse(*specs: str, stdin: bytes | None = None, extra: tuple[str, ...] = ()) -> dict:
    proc = run_bytes(
        [sys.executable, str(SCRIPTS / "layer_reuse.py"), "--json", *extra, *specs], stdin or b""
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_layer_reuse_counts_shared_bytes_by_digest(tmp_path: Path) -> None:
    base = docker_archive(tmp_path / "base.tar.gz", [SYSTEM, DEPS, APP], "base", compress=True)
    api = docker_archive(tmp_path / "api.tar", [SYSTEM, DEPS, APP, API_SDK], "api", manifest_last=False)
    gpu_stream = docker_archive(tmp_path / "gpu.tar", [SYSTEM, DEPS, APP, CUDA], "gpu").read_bytes()
    report = reuse(f"base={base}", f"api={api}", "gpu=-", stdin=gpu_stream)
    rows = {row["name"]: row for row in report["images"]}
    lower = len(SYSTEM) + len(DEPS) + len(APP)
    assert rows["base"]["shared_bytes"] == lower == rows["base"]["bytes"]
    assert rows["api"]["layers"] == 4 and rows["api"]["shared_layers"] == 3
    assert rows["api"]["shared_bytes"] == lower and rows["api"]["own_bytes"] == len(API_SDK)
    assert rows["gpu"]["shared_bytes"] == lower and rows["gpu"]["bytes"] == lower + len(CUDA)
    assert report["total_bytes"] == 3 * lower + len(API_SDK) + len(CUDA)
    assert report["stored_bytes"] == lower + len(API_SDK) + len(CUDA)
    assert report["saved_ratio"] == pytest.approx(1 - report["stored_bytes"] / report["total_bytes"])
    # Same layers, different config: different image ids.
    assert len({row["config_digest"] for row in rows.values()}) == 3


def test_layer_reuse_nothing_shared_and_the_base_option(tmp_path: Path) -> None:
    a = docker_archive(tmp_path / "a.tar", [API_SDK], "a")
    b = docker_archive(tmp_path / "b.tar", [CUDA, DEPS], "b")
    report = reuse(f"a={a}", f"b={b}", extra=("--base", "b"))
    rows = {row["name"]: row for row in report["images"]}
    assert report["base"] == "b" and rows["a"]["shared_bytes"] == 0 and rows["b"]["shared_layers"] == 2
    assert report["stored_bytes"] == report["total_bytes"] and report["saved_ratio"] == 0


def test_layer_reuse_reads_oci_layouts_with_the_same_identity(tmp_path: Path) -> None:
    base = docker_archive(tmp_path / "base.tar", [SYSTEM, DEPS], "base")
    oci = oci_archive(tmp_path / "api-oci.tar", [SYSTEM, DEPS, API_SDK], "api")
    report = reuse(f"base={base}", f"api={oci}")
    api = report["images"][1]
    # Layers are compressed blobs in the OCI archive, yet recognised as base's layers by their diff ids.
    assert api["layers"] == 3 and api["shared_layers"] == 2


def test_layer_reuse_summaries_give_the_same_report(tmp_path: Path) -> None:
    base = docker_archive(tmp_path / "base.tar", [SYSTEM, DEPS, APP], "base")
    api = docker_archive(tmp_path / "api.tar", [SYSTEM, DEPS, APP, API_SDK], "api")
    direct = reuse(f"base={base}", f"api={api}", extra=("--summary-out", str(tmp_path / "s")))
    summary = json.loads((tmp_path / "s" / "api.json").read_text())
    assert [x["digest"] for x in summary["layers"]] == [sha(x) for x in (SYSTEM, DEPS, APP, API_SDK)]
    assert reuse(f"base={tmp_path / 's' / 'base.json'}", f"api={tmp_path / 's' / 'api.json'}") == direct
    # Human-readable form: one row per image and the storage line.
    proc = run(sys.executable, SCRIPTS / "layer_reuse.py", f"base={base}", f"api={api}")
    assert (
        proc.returncode == 0 and re.search(r"^api\s+4\s", proc.stdout, re.M) and "stored once" in proc.stdout
    )


def test_layer_reuse_rejects_broken_archives(tmp_path: Path) -> None:
    good = docker_archive(tmp_path / "good.tar", [SYSTEM], "good")
    # A layer whose bytes do not match the config's diff id (corrupted or tampered).
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    layer_name = next(n for n in members if n.endswith("layer.tar"))
    members[layer_name] = layer_tar("other", 1000)
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members.items():
            add(tar, name, data)
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"not a tar archive at all" * 100)
    no_manifest = tmp_path / "nm.tar"
    with tarfile.open(no_manifest, "w") as tar:
        add(tar, "hello.txt", b"hi")
    for spec, message in [
        (f"bad={bad}", "the config says"),
        (f"x={not_tar}", "not a readable tar archive"),
        (f"nm={no_manifest}", "neither manifest.json"),
        (str(good), "expected NAME=SOURCE"),
        (f"m={tmp_path / 'missing.tar'}", "no such file"),
    ]:
        proc = run(sys.executable, SCRIPTS / "layer_reuse.py", spec)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# --- check-secrets --------------------------------------------------------------------------------------------

# Built at run time so this file holds no secret-looking literal itself.
FAKE = {
    "private-key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
    "aws-access-key-id": "AKIA" + "Z7Q2" * 4,
    "openai-key": "sk-" + "proj-" + "Xq7Lm2Np9Rt4Vw8Yz3Bc6Df1Gh5",
    "github-token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def secrets(repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, SCRIPTS / "check-secrets", "--repo", repo, *extra)


def test_check_secrets_finds_each_kind_and_masks_it(repo: Path) -> None:
    lines = [f"value_{i} = '{v}'" for i, v in enumerate(FAKE.values())]
    generated = "Zr8" + "kQ2mX9vL4pT7wB3n"
    lines.append(f'REDIS_PASSWORD = "{generated}"')
    (repo / "settings.py").write_text("\n".join(lines) + "\n")
    (repo / "new-untracked.env").write_text("API_TOKEN='" + "f3Kd9" + "Lq2Wm8Zp4Xv7'\n")
    proc = secrets(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = set(re.findall(r"^(\S+?):(\d+): ([a-z-]+):", proc.stdout, re.M))
    expected = {("settings.py", str(i + 1), rule) for i, rule in enumerate(FAKE)}
    expected |= {("settings.py", "5", "generic-assignment"), ("new-untracked.env", "1", "generic-assignment")}
    assert found == expected, proc.stdout
    for value in [*FAKE.values(), generated]:
        assert value not in proc.stdout + proc.stderr  # masked: the CI log must not become the leak


def test_check_secrets_lets_placeholders_names_and_ignored_files_pass(repo: Path) -> None:
    (repo / "config.toml").write_text(
        "\n".join(
            [
                'password = "${REDIS_PASSWORD}"',
                'password = "changeme-please"',
                '"connectors.runpod.api_key": "runpod-api-key"',
                'token = "<your-token-here>"',
                'api_key = "$OPENAI_API_KEY"',
                'secret = "xxxxxxxxxxxxxxxx"',
            ]
        )
        + "\n"
    )
    (repo / ".gitignore").write_text("local.env\n")
    (repo / "local.env").write_text(f"KEY={FAKE['openai-key']}\n")  # ignored: never committed
    (repo / "blob.bin").write_bytes(b"\0\1\2" + FAKE["aws-access-key-id"].encode())  # binary: skipped
    proc = secrets(repo)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stdout + proc.stderr


def test_check_secrets_allowlist_needs_fingerprint_and_reason(repo: Path) -> None:
    (repo / "test_fixture.py").write_text(f"PLANTED = '{FAKE['openai-key']}'  # fake, planted by the test\n")
    proc = secrets(repo)
    fingerprint = re.search(r"fingerprint ([0-9a-f]{16})", proc.stdout)
    assert proc.returncode == 1 and fingerprint
    allow = repo / "allow"
    allow.write_text(
        f"test_fixture.py openai-key {fingerprint[1]}  # planted fake key, asserted redacted\n"
        f"gone.py openai-key {'0' * 16}  # a fixture that was deleted\n"
    )
    proc = secrets(repo, "--allowlist", str(allow))
    assert proc.returncode == 0 and "1 allowlisted" in proc.stdout, proc.stdout + proc.stderr
    assert "matches nothing any more: gone.py" in proc.stderr
    allow.write_text(f"test_fixture.py openai-key {fingerprint[1]}\n")
    proc = secrets(repo, "--allowlist", str(allow))
    assert proc.returncode == 2 and "without a reason" in proc.stderr
    # The same fake value in another file is not covered by the entry for this one.
    (repo / "elsewhere.py").write_text(f"K = '{FAKE['openai-key']}'\n")
    allow.write_text(f"test_fixture.py openai-key {fingerprint[1]}  # planted\n")
    proc = secrets(repo, "--allowlist", str(allow))
    assert proc.returncode == 1 and "elsewhere.py:1: openai-key" in proc.stdout


def test_check_secrets_outside_a_work_tree(tmp_path: Path) -> None:
    proc = secrets(tmp_path)
    assert proc.returncode == 2 and "not a git work tree" in proc.stderr and "Traceback" not in proc.stderr


# --- check-nosec, unit exposure, security stage ---------------------------------------------------------------


def test_check_nosec_wants_an_id_and_a_reason(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "a = 1  # nosec\nb = 2  # nosec B104\nc = '# nosec'  # a string, not a comment\n"
        "d = 4  # nosec B104: bound on purpose, behind the firewall\n"
        "e = 5  # nosec B104,B603 # reachable by the monitor\n"
    )
    proc = run(sys.executable, SCRIPTS / "check-nosec", tmp_path)
    assert proc.returncode == 1
    assert [line.split(":")[1] for line in proc.stdout.splitlines()] == ["1", "2"], proc.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_limits_match_the_units_tests() -> None:
    from tests.test_units_verify import MAX_EXPOSURE

    proc = run(sys.executable, SCRIPTS / "unit-exposure")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = {
        m[1]: (float(m[2]), float(m[3]))
        for m in re.finditer(r"^(\S+)\s+(\d+\.\d)\s+(\d+\.\d)\s+ok$", proc.stdout, re.M)
    }
    assert {unit: limit for unit, (_, limit) in table.items()} == MAX_EXPOSURE


def test_security_stage_reports_pip_audit_as_skipped_not_passed() -> None:
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_PIP_AUDIT"}
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "security.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    summary = proc.stdout.split("--- security summary")[-1]
    assert re.search(r"pip-audit\s+SKIPPED", summary) and "cannot reach" in proc.stdout, proc.stdout
    for name in ("bandit", "nosec", "secrets", "unit-exposure"):
        assert re.search(rf"^\s+{name}\s+(ok|FAILED|SKIPPED)", summary, re.M), summary
    # The exit status is the verdict of the checks that ran: non-zero exactly when one of them failed.
    assert (proc.returncode != 0) == ("FAILED" in summary)


# --- rolling update and image push (dry runs) -----------------------------------------------------------------


def rolling(*argv: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, SCRIPTS / "rolling-update", *argv)


def test_rolling_update_plan_takes_one_machine_at_a_time() -> None:
    proc = rolling("--dry-run", "--fleet-drain", "gpu1.example.internal", "admin@api7=api-7")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    hosts = re.split(r"^# \d/2 ", out, flags=re.M)[1:]
    assert [h.split()[0] for h in hosts] == ["gpu1", "api-7"]
    order = [
        "nix build",
        "nix copy",
        "fleet drain",
        "until no worker",
        "systemctl stop 'appliance*'",
        "nix-env --profile /nix/var/nix/profiles/system",
        "switch-to-configuration' switch",
        "systemctl start appliance.target",
        "/ready answers 200",
        "fleet undrain",
    ]
    for section in hosts:
        positions = [section.find(step) for step in order]
        assert -1 not in positions and positions == sorted(positions), section
    # The second machine is stopped only after the first one is ready again.
    assert out.index("gpu1.example.internal:9090/ready") < out.index("ssh admin@api7 -- sudo systemctl stop")
    assert "nixosConfigurations.api-7.config.system.build.toplevel" in hosts[1]
    assert "ssh://admin@api7" in hosts[1] and "http://api7:9090" in hosts[1]
    assert "nothing was run" in out


def test_rolling_update_plan_for_container_hosts() -> None:
    proc = rolling("--dry-run", "--no-sudo", "--image", "registry.invalid/team/appliance-api:0.2.0", "h1")
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"^\s+\d+\. (.*)$", proc.stdout, re.M)
    assert steps[0].endswith("podman pull registry.invalid/team/appliance-api:0.2.0")
    assert "systemctl stop appliance.service" in steps[1] and "podman tag" in steps[2]
    assert "systemctl start appliance.service" in steps[3] and "/ready" in steps[4]
    assert not any("sudo" in s for s in steps) and not any("nix" in s for s in steps)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no hosts given"),
        (["h1", "h1"], "host given twice: h1"),
        (["a.x", "a.y"], "name given twice: a"),
        (["bad host"], "is not a host name"),
        (["h1=bad/name"], "is not a valid"),
        (["--image", "UPPER CASE", "h1"], "is not an image reference"),
        (["--health-port", "0", "h1"], "is not a port"),
    ],
)
def test_rolling_update_refuses_bad_input(argv: list[str], message: str) -> None:
    proc = rolling("--dry-run", *argv)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_push_images_tags_version_and_revision() -> None:
    proc = run(
        "bash",
        SCRIPTS / "push-images",
        "--dry-run",
        "--repository",
        "registry.invalid/team",
        "--version",
        "0.3.1",
        "--revision",
        "0123abc",
        "base",
        "api",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 4
    assert "docker-archive:$(" in lines[0] and lines[0].endswith(
        "docker://registry.invalid/team/appliance-base:0.3.1"
    )
    assert lines[1].endswith("appliance-base:0.3.1 docker://registry.invalid/team/appliance-base:0123abc")
    assert "| gzip --fast | skopeo copy --quiet docker-archive:/dev/stdin" in lines[2]
    for argv, message in [
        (["--version", "1", "--revision", "2"], "--repository"),
        (["--repository", "r/x", "--version", "bad tag", "--revision", "2"], "not a valid image tag"),
        (["--repository", "r;x", "--version", "1", "--revision", "2"], "not a registry"),
    ]:
        proc = run("bash", SCRIPTS / "push-images", "--dry-run", *argv)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", ["build-images", "check-reproducible"])
def test_build_scripts_refuse_unknown_images(script: str) -> None:
    proc = run("bash", SCRIPTS / script, "windows")
    assert proc.returncode == 2 and "unknown argument 'windows'" in proc.stderr


# --- the GitHub workflow --------------------------------------------------------------------------------------


def test_workflow_runs_the_checks_and_references_what_exists() -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    workflow = yaml.safe_load(text)
    jobs = workflow["jobs"]
    assert set(jobs) >= {"python", "nix", "release"}
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    assert "bash .ci/run" in runs["python"] and jobs["python"]["env"]["APPLIANCE_PIP_AUDIT"] == "1"
    assert "pip-audit" in runs["python"]
    assert "nix flake check" in runs["nix"]
    assert "scripts/push-images" in runs["release"] and "GITHUB_SHA" in runs["release"]
    assert jobs["release"]["if"].startswith("startsWith(github.ref, 'refs/tags/v')")
    for path in set(re.findall(r"((?:scripts|\.ci)/[\w.-]+)", text)):
        assert (ROOT / path).is_file() and os.access(ROOT / path, os.X_OK), path
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]
    # No registry or mirror host in the repo: registries come from repository variables.
    assert not re.search(r"https?://", text)


def test_rolling_update_names_a_rollback_only_for_a_host_it_changed() -> None:
    """The first step (pulling the image over ssh) fails on a host that does not resolve: nothing was changed
    there, so the message says so instead of telling the operator to roll it back."""
    proc = rolling("--no-sudo", "--image", "registry.invalid/team/appliance-api:0.2.0", "nohost.invalid")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Nothing was changed on nohost.invalid" in proc.stderr, proc.stderr
    assert "Roll back" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
