"""Boot a real systemd (Debian bookworm, systemd 252) under systemd-nspawn and drive it from the host.

The host's PID 1 need not be systemd: nspawn runs the container's own. `machinectl`/`systemctl -M` need a
registered machine and the host's system bus, which a CI box may not have, so the container is started with
`--register=no --keep-unit` and reached with `nsenter` into its PID 1 (the "leader") instead. It shares the
host's network, so a redis-server on a host loopback port is reachable from the units inside.

Teardown always ends the container: a clean poweroff first, then SIGKILL of its PID 1, which takes the whole
PID namespace (and with it every mount nspawn made) down.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_ROOTFS = HERE / "build-rootfs.sh"
#: The venv the rootfs builder creates; the checkout's wheel goes into it.
VENV = Path("/opt/appliance")
APPLIANCE_BIN = VENV / "bin" / "appliance"

T = TypeVar("T")


class HarnessError(RuntimeError):
    """The container could not be built, booted or driven; the message carries what the journal said."""


def skip_reason() -> str | None:
    """Why these tests cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "systemd-nspawn tests need Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn tests need root (run the suite as root, as CI does)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install systemd-container util-linux)"
    if os.environ.get("APPLIANCE_SKIP_NSPAWN"):
        return "APPLIANCE_SKIP_NSPAWN is set"
    return None


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 600, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise HarnessError(
            f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def build_rootfs() -> Path:
    """The cached rootfs (built on first use: see build-rootfs.sh)."""
    if shutil.which("mmdebstrap") is None:
        raise HarnessError("mmdebstrap not installed (apt-get install mmdebstrap)")
    proc = run(["bash", str(BUILD_ROOTFS), str(REPO / "pyproject.toml")], timeout=1200)
    return Path(proc.stdout.strip().splitlines()[-1])


def build_wheel(dest: Path) -> Path:
    """A wheel of the checkout (no dependencies: the rootfs's venv has them)."""
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy to leave the checkout alone.
    source = dest / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".mypy_cache",
            ".ruff_cache",
            "result*",
        ),
    )
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), str(source)])
    shutil.rmtree(source)
    wheels = sorted(dest.glob("appliance-*.whl"))
    if not wheels:
        raise HarnessError(f"pip wheel wrote no appliance wheel into {dest}")
    return wheels[-1]


def nspawn_run(tree: Path, *argv: str, binds: Sequence[tuple[Path, str]] = ()) -> str:
    """Run one command in `tree` (no boot), as the rootfs builder does."""
    cmd = ["systemd-nspawn", "--quiet", "--pipe", "--register=no", "--keep-unit", f"--directory={tree}"]
    cmd += [f"--bind-ro={src}:{dst}" for src, dst in binds]
    return run([*cmd, *argv]).stdout


def prepare_tree(rootfs: Path, tree: Path, wheel: Path) -> Path:
    """A private copy of `rootfs` with the checkout installed into its venv; returns `tree`."""
    run(["cp", "-a", "--reflink=auto", str(rootfs), str(tree)])
    nspawn_run(
        tree,
        str(VENV / "bin" / "pip"),
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        f"/tmp/wheel/{wheel.name}",
        binds=[(wheel.parent, "/tmp/wheel")],
    )
    return tree


def install_units(tree: Path, plan: dict, *extra: str) -> str:
    """`appliance units install` into `tree`, run from the checkout on the host (the same code)."""
    plan_file = tree / "root" / "plan.json"
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    return run(
        [
            sys.executable,
            "-m",
            "appliance",
            "units",
            "install",
            "--root",
            str(tree),
            "--bin",
            str(APPLIANCE_BIN),
            "--plan-json",
            str(plan_file),
            *extra,
        ]
    ).stdout


def write_env(tree: Path, env: dict[str, str]) -> None:
    lines = [f"{key}={value}" for key, value in sorted(env.items())]
    (tree / "etc" / "appliance").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "appliance" / "appliance.env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_credential(tree: Path, name: str, value: str) -> None:
    store = tree / "etc" / "credstore"
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = store / name
    path.write_text(value, encoding="utf-8")
    path.chmod(0o600)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy. The timeout only bounds a hang; it is not the assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(interval)


@dataclass
class Container:
    """One booted container. Use `boot()`; every method runs inside it via nsenter."""

    tree: Path
    name: str
    console_log: Path
    process: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, timeout: float = 90) -> None:
        cmd = [
            "systemd-nspawn",
            f"--directory={self.tree}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            "--volatile=overlay",
            "--kill-signal=SIGRTMIN+3",
            *self.extra_args,
        ]
        with open(self.console_log, "wb") as log:
            # A session of its own: the test runner's Ctrl-C must reach the teardown, not nspawn directly.
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.leader = wait_for("the container's PID 1", self._find_leader, 30, on_timeout=self.console)
        wait_for("systemd inside to finish booting", self._booted, timeout, on_timeout=self.diagnostics)

    def _find_leader(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited {self.process.returncode} at start:\n{self.console()}")
        # nspawn's direct child is the container's init; it runs in a PID namespace of its own.
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    if os.readlink(f"/proc/{child}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                        return int(child)
                except OSError:
                    continue
        return None

    def _booted(self) -> bool:
        state = self.sh("systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def sh(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if self.leader is None:
            raise HarnessError("container not started")
        return run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv], check=check, timeout=timeout, input=input
        )

    def systemctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("systemctl", "--no-pager", *argv, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "--property=" + ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def kill_main(self, unit: str, sig: str = "KILL") -> int:
        """Send `sig` to the unit's main process from inside, as an OOM kill or a crash would; returns its PID."""
        pid = int(self.show(unit, "MainPID")["MainPID"])
        if pid == 0:
            raise HarnessError(f"{unit} has no main process")
        self.sh("kill", "-s", sig, str(pid))
        return pid

    def wait_active(self, unit: str, timeout: float = 90) -> dict[str, str]:
        def probe() -> dict[str, str] | None:
            props = self.show(unit, "ActiveState", "SubState", "Result", "StatusText", "MainPID", "NRestarts")
            if props.get("ActiveState") == "failed":
                raise HarnessError(f"{unit} failed: {props}\n{self.diagnostics(unit)}")
            return props if props.get("ActiveState") == "active" else None

        return wait_for(f"{unit} to be active", probe, timeout, on_timeout=lambda: self.diagnostics(unit))

    def wait_props(
        self,
        unit: str,
        what: str,
        predicate: Callable[[dict[str, str]], bool],
        props: Sequence[str],
        timeout: float = 90,
    ) -> dict[str, str]:
        def probe() -> dict[str, str] | None:
            values = self.show(unit, *props)
            return values if predicate(values) else None

        return wait_for(f"{unit}: {what}", probe, timeout, on_timeout=lambda: self.diagnostics(unit))

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        if unit:
            argv += ["-u", unit]
        return self.sh(*argv, check=False).stdout

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def diagnostics(self, unit: str | None = None) -> str:
        """What a failing test prints: unit states and the journal."""
        parts = []
        try:
            parts.append(self.systemctl("list-units", "--all", "appliance*", check=False).stdout)
            if unit:
                parts.append(self.systemctl("status", unit, check=False).stdout)
            parts.append(self.journal(unit))
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            parts.append(f"(diagnostics failed: {exc})\n{self.console()}")
        return "\n".join(parts)

    def stop(self, timeout: float = 30) -> int | None:
        """Power the container off (SIGRTMIN+3 to its init via nspawn); kill it if that hangs. Returns nspawn's exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the container's PID 1 (the kernel then kills its whole PID namespace), then nspawn."""
        if self.leader is not None:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def booted(
    tree: Path, name: str, log_dir: Path, extra_args: Sequence[str] = (), timeout: float = 90
) -> Iterator[Container]:
    """Boot `tree` (read-only underneath: --volatile=overlay) and always tear it down."""
    container = Container(
        tree=tree, name=name, console_log=log_dir / f"{name}.console.log", extra_args=list(extra_args)
    )
    try:
        container.start(timeout)
        yield container
    finally:
        container.stop()
