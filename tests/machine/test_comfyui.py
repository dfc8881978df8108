"""The ComfyUI wrapper as a real process around a real child: ready, watchdog, hang, death, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.localredis import free_port
from appliance.machine.comfyui import build_command, prepare_instance_dir
from tests.machine.notifysock import NotifySocket

FAKE = Path(__file__).with_name("fake_comfyui.py")
PLANTED = "planted-redis-password-xyz"


def test_build_command() -> None:
    s = Settings.model_validate(
        {
            "comfyui": {
                "command": ["python", "main.py"],
                "base_port": 9000,
                "listen": "0.0.0.0",
                "extra_args": ["--highvram"],
            }
        }
    )
    env = {
        "PATH": "/bin",
        "APPLIANCE_REDIS__PASSWORD": "x",
        "APPLIANCE_OPENAI_API_KEY_FILE": "/k",
        "CREDENTIALS_DIRECTORY": "/run/creds",
        "APPLIANCE_COMFYUI__BASE_PORT": "9000",
    }
    cmd = build_command(s, 2, env)
    assert cmd.argv == [
        "python",
        "main.py",
        "--listen",
        "0.0.0.0",
        "--port",
        "9002",
        "--cuda-device",
        "2",
        "--highvram",
    ]
    assert cmd.probe_url == "http://127.0.0.1:9002/system_stats"
    assert cmd.env == {
        "PATH": "/bin",
        "APPLIANCE_COMFYUI__BASE_PORT": "9000",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    cpu = build_command(Settings.model_validate({"comfyui": {"cpu": True}}), 0, {})
    assert cpu.argv[-1] == "--cpu" and "--cuda-device" not in cpu.argv


class Wrapper:
    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None, mode: str = "ok") -> None:
        self.control = tmp / "control"
        self.record = tmp / "record"
        self.set(mode)
        self.notify = NotifySocket()
        port = free_port()
        self.env = {
            **os.environ,
            "NOTIFY_SOCKET": self.notify.path,
            "WATCHDOG_USEC": "400000",
            "FAKE_COMFY_CONTROL": str(self.control),
            "FAKE_COMFY_RECORD": str(self.record),
            "APPLIANCE_COMFYUI__COMMAND": json.dumps([sys.executable, str(FAKE)]),
            "APPLIANCE_COMFYUI__BASE_PORT": str(port - 1),
            "APPLIANCE_COMFYUI__REQUEST_TIMEOUT_S": "0.5",
            "APPLIANCE_REDIS__PASSWORD": PLANTED,
            **(env or {}),
        }
        self.env.pop("APPLIANCE_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "comfyui", "--gpu", "1", *extra],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # WatchdogPinger only honours WATCHDOG_PID when set; the pid is the wrapper's own, so leave it unset.

    def set(self, mode: str) -> None:
        # Atomically: the child must never read a half-written (empty) file, which means "ok".
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(mode)
        os.replace(tmp, self.control)

    def records(self) -> list[dict]:
        return (
            [json.loads(line) for line in self.record.read_text().splitlines()]
            if self.record.exists()
            else []
        )

    def wait(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for r in self.records():
            if "pid" in r:
                try:
                    os.kill(r["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.notify.close()


@pytest.fixture
def wrapper(tmp_path):
    made: list[Wrapper] = []

    def make(*extra: str, env: dict[str, str] | None = None, mode: str = "ok") -> Wrapper:
        w = Wrapper(tmp_path, *extra, env=env, mode=mode)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of an exited child still answers kill(0) until reaped by its parent: check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_instance_directory_flags_and_links(tmp_path: Path) -> None:
    """Every directory ComfyUI writes is under the instance's own directory (issue 11, defect 2: on NixOS its
    own directory is the read-only store), and the configured models/custom nodes are linked into it."""
    models, nodes = tmp_path / "models-tree", tmp_path / "nodes-tree"
    s = Settings.model_validate(
        {"comfyui": {"command": ["comfy"], "models_dir": str(models), "custom_nodes_dir": str(nodes)}}
    )
    state = tmp_path / "state"
    # systemd hands every StateDirectory= entry over, colon-separated.
    env = {"STATE_DIRECTORY": f"{state}:{state / 'comfyui-3'}"}
    cmd = build_command(s, 3, env)
    base = state / "comfyui-3"
    flags = dict(zip(cmd.argv[::1], cmd.argv[1:], strict=False))
    assert flags["--base-directory"] == str(base)
    assert flags["--output-directory"] == str(base / "output")
    assert flags["--input-directory"] == str(base / "input")
    assert flags["--user-directory"] == str(base / "user")
    assert flags["--temp-directory"] == str(base)  # ComfyUI appends "temp"
    assert flags["--database-url"] == f"sqlite:///{base}/user/comfyui.db"
    assert "STATE_DIRECTORY" not in cmd.env
    prepare_instance_dir(cmd)
    assert all((base / d).is_dir() for d in ("output", "input", "user", "temp"))
    assert os.readlink(base / "models") == str(models) and os.readlink(base / "custom_nodes") == str(nodes)
    # A rebuild with another models tree relinks; running again with the same one changes nothing.
    cmd2 = build_command(
        s.model_copy(update={"comfyui": s.comfyui.model_copy(update={"models_dir": nodes})}), 3, env
    )
    prepare_instance_dir(cmd2)
    assert os.readlink(base / "models") == str(nodes)
    prepare_instance_dir(cmd2)
    # A real directory of that name is never deleted.
    (base / "custom_nodes").unlink()
    (base / "custom_nodes").mkdir()
    with pytest.raises(OSError, match="directory of its own"):
        prepare_instance_dir(cmd2)
    # Under another unit (the supervisor in container mode): beside its state directory.
    assert build_command(s, 1, {"STATE_DIRECTORY": str(state)}).base_dir == state / "comfyui-1"
    # Configured explicitly, it wins; with neither, ComfyUI keeps its defaults (foreground development).
    explicit = Settings.model_validate({"comfyui": {"state_dir": str(tmp_path / "x")}})
    assert build_command(explicit, 0, env).base_dir == tmp_path / "x" / "comfyui-0"
    plain = build_command(Settings(), 0, {})
    assert plain.base_dir is None and "--base-directory" not in plain.argv


def test_under_a_systemd_watchdog_the_wrapper_does_not_kill_a_hang(wrapper) -> None:
    """One judge of a hang: with WATCHDOG_USEC set the wrapper only stops pinging, so systemd's watchdog acts
    (Result=watchdog) instead of racing the wrapper's own kill."""
    w = wrapper("--hang-after", "0.5")
    lines = w.notify.wait_for(lambda ls: ls.count("WATCHDOG=1") >= 2)
    assert lines.index("READY=1") < lines.index("WATCHDOG=1")
    child = next(r for r in w.records() if "pid" in r)
    w.set("hang")
    # Silent for more than twice --hang-after, and still running.
    w.notify.wait_for(lambda ls: any(re.search(r"not answering for ([2-9]|\d\d)s", line) for line in ls))
    assert w.proc.poll() is None and _alive(child["pid"])
    lines = w.notify.lines()
    first_silent = next(i for i, line in enumerate(lines) if "not answering" in line)
    assert lines[first_silent:].count("WATCHDOG=1") <= 1, lines


def test_ready_watchdog_then_hang_kills_and_fails(wrapper) -> None:
    """Without a systemd watchdog (foreground, supervised container mode) the wrapper kills a hang itself."""
    w = wrapper("--hang-after", "1.5", env={"WATCHDOG_USEC": ""})
    w.notify.wait_line("READY=1")
    child = next(r for r in w.records() if "pid" in r)
    assert child["argv"] == [
        "--listen",
        "127.0.0.1",
        "--port",
        str(int(w.env["APPLIANCE_COMFYUI__BASE_PORT"]) + 1),
        "--cuda-device",
        "1",
    ]
    assert PLANTED not in json.dumps(child["env"]) and child["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    w.set("hang")
    code, out = w.wait()
    assert code != 0
    assert "has not answered" in out and "fake comfyui log line" in out  # the child's output passes through
    assert any("hung" in line for line in w.notify.lines() if line.startswith("STATUS="))
    assert not _alive(child["pid"])


def test_child_death_fails_the_wrapper(wrapper) -> None:
    w = wrapper()
    w.notify.wait_line("READY=1")
    w.set("die")
    code, out = w.wait()
    assert code == 3 and "ComfyUI exited with status 3" in out


def test_sigterm_is_forwarded(wrapper) -> None:
    w = wrapper()
    w.notify.wait_line("READY=1")
    w.proc.send_signal(signal.SIGTERM)
    code, _ = w.wait()
    assert code == 0
    assert "STOPPING=1" in w.notify.lines()
    assert {"signal": signal.SIGTERM} in w.records()


def test_never_answering_child_fails_startup(wrapper) -> None:
    w = wrapper(env={"APPLIANCE_COMFYUI__STARTUP_TIMEOUT_S": "1"}, mode="never")
    code, out = w.wait()
    assert code == 1 and "did not answer" in out
    assert "READY=1" not in w.notify.lines()


def test_bad_arguments_are_one_line() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "appliance", "comfyui", "--gpu", "-1"], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.strip() == "appliance: error: --gpu must be 0 or more, not -1"
