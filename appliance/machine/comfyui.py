"""`appliance comfyui --gpu N`: run one ComfyUI as a child and tell systemd how it is.

READY=1 once `GET /system_stats` answers; WATCHDOG=1 while it keeps answering. A hang has one judge:
- under a systemd watchdog (WatchdogSec=, so $WATCHDOG_USEC is set) the wrapper only stops pinging, and systemd
  kills the unit (Result=watchdog, counted by `machine record-stop`) and restarts it;
- without one (foreground, supervised container mode) the wrapper kills ComfyUI itself once it has not answered
  for `hang_after_s`, and exits non-zero so whatever started it restarts it.
Either way the child exiting makes the wrapper exit non-zero. SIGTERM/SIGINT are passed on to the child. The
child's stdout and stderr are the wrapper's (journald under systemd), so ComfyUI's log lines pass through.

ComfyUI writes output, input, temp and user files (and its database) under its own directory unless told
otherwise; on NixOS that is the read-only store. Each instance therefore gets a directory of its own
(`instance_dir`), and every ComfyUI directory flag points into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from appliance.config import Settings
from appliance.netaddr import connect_host
from appliance.notify import Notifier, WatchdogPinger

log = logging.getLogger(__name__)

#: Seconds the child gets between SIGTERM and SIGKILL (keep below the unit's TimeoutStopSec=).
STOP_GRACE_S = 20.0
#: Environment variables the child must not inherit: ComfyUI and its custom nodes need none of our secrets.
_SECRET_ENV = re.compile(r"^APPLIANCE_.*(PASSWORD|API_KEY|SECRET|TOKEN)(_FILE)?$|^CREDENTIALS_DIRECTORY$")


#: Subdirectories of an instance directory that ComfyUI writes (temp: `--temp-directory` appends `temp`).
WRITABLE_DIRS = ("output", "input", "user", "temp")


@dataclass(frozen=True)
class ComfyCommand:
    argv: list[str]
    cwd: Path | None
    env: dict[str, str]
    port: int
    probe_url: str
    #: The instance's own directory (every ComfyUI directory flag points into it); None: ComfyUI's defaults.
    base_dir: Path | None = None
    #: Directories to link into `base_dir` before ComfyUI starts: name -> target.
    links: dict[str, Path] | None = None


def instance_dir(settings: Settings, gpu: int, environ: dict[str, str]) -> Path | None:
    """Where ComfyUI instance `gpu` keeps its files.

    `comfyui.state_dir/comfyui-<gpu>` when configured; else the unit's `StateDirectory=appliance/comfyui-%i`
    (systemd lists every StateDirectory= entry, colon-separated, in $STATE_DIRECTORY); else, under another unit
    (the supervisor in container mode), `comfyui-<gpu>` beside its first state directory; else None.
    """
    name = f"comfyui-{gpu}"
    if settings.comfyui.state_dir is not None:
        return settings.comfyui.state_dir / name
    entries = [Path(e) for e in environ.get("STATE_DIRECTORY", "").split(":") if e]
    for entry in entries:
        if entry.name == name:
            return entry
    return entries[0] / name if entries else None


def directory_args(base: Path) -> list[str]:
    """ComfyUI's flags that put every file it writes under `base`."""
    return [
        "--base-directory",
        str(base),
        "--output-directory",
        str(base / "output"),
        "--input-directory",
        str(base / "input"),
        "--user-directory",
        str(base / "user"),
        # ComfyUI appends "temp" to this one.
        "--temp-directory",
        str(base),
        # Its default lies beside ComfyUI's own code, not under --base-directory.
        "--database-url",
        f"sqlite:///{base / 'user' / 'comfyui.db'}",
    ]


def prepare_instance_dir(command: ComfyCommand) -> None:
    """Create the instance's writable directories and point `models`/`custom_nodes` at the configured ones.

    A link is replaced when its target changed (a new models derivation after a rebuild); a real directory of
    the same name is left alone and reported, never deleted.
    """
    base = command.base_dir
    if base is None:
        return
    for sub in WRITABLE_DIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in (command.links or {}).items():
        link = base / name
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                continue
            link.unlink()
        elif link.exists():
            raise OSError(f"{link} is a directory of its own; move it away to use {target}")
        link.symlink_to(target, target_is_directory=True)


def build_command(settings: Settings, gpu: int, environ: dict[str, str] | None = None) -> ComfyCommand:
    c = settings.comfyui
    environ = dict(os.environ if environ is None else environ)
    port = c.base_port + gpu
    argv = [*c.command, "--listen", c.listen, "--port", str(port)]
    base = instance_dir(settings, gpu, environ)
    links: dict[str, Path] = {}
    if base is not None:
        argv += directory_args(base)
        if c.models_dir is not None:
            links["models"] = c.models_dir
        if c.custom_nodes_dir is not None:
            links["custom_nodes"] = c.custom_nodes_dir
    env = {
        k: v
        for k, v in environ.items()
        if not _SECRET_ENV.match(k)
        and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY")
    }
    if c.cpu or settings.machine.gpu_cpu_mode:
        argv.append("--cpu")
    else:
        # NVML numbers GPUs in PCI order; make CUDA agree so GPU N here is GPU N in the plan and the metrics.
        argv += ["--cuda-device", str(gpu)]
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    argv += c.extra_args
    host = connect_host(c.listen)
    return ComfyCommand(argv, c.workdir, env, port, f"http://{host}:{port}/system_stats", base, links)


class ComfyWrapper:
    def __init__(
        self,
        command: ComfyCommand,
        *,
        startup_timeout_s: float,
        request_timeout_s: float,
        hang_after_s: float | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.command = command
        self.startup_timeout_s = startup_timeout_s
        self.request_timeout_s = request_timeout_s
        self.notifier = notifier or Notifier()
        self.hang_after_s = hang_after_s if hang_after_s is not None else 3 * request_timeout_s
        self.probe_interval_s = min(5.0, max(0.1, self.hang_after_s / 3))
        #: Whether the wrapper kills a hung ComfyUI itself: only where no systemd watchdog judges the hang
        #: (module docstring), so the two never race and the unit's Result= says who acted.
        self.kills_hangs = self.notifier.watchdog_interval_s() is None
        self.stop_event = asyncio.Event()
        self.last_ok = 0.0
        #: Result of the latest probe: the watchdog pings only while it is True.
        self.probe_ok = False
        self.proc: asyncio.subprocess.Process | None = None

    async def _probe(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(self.command.probe_url) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _answering(self) -> bool:
        """Watchdog check: ComfyUI answered the latest probe, and that probe is recent (the loop still turns)."""
        return (
            self.probe_ok
            and time.monotonic() - self.last_ok < self.probe_interval_s * 2 + self.request_timeout_s
        )

    async def _wait(self, seconds: float) -> None:
        """Sleep until the interval passes, a stop is requested or the child exits."""
        assert self.proc is not None
        waits = [asyncio.create_task(self.stop_event.wait()), asyncio.create_task(self.proc.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()

    def _child_exit_code(self) -> int:
        assert self.proc is not None and self.proc.returncode is not None
        code = self.proc.returncode
        log.error("ComfyUI exited with %s", f"signal {-code}" if code < 0 else f"status {code}")
        return 128 - code if code < 0 else (code or 1)  # an exit is a failure, even with status 0

    async def _stop_child(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("ComfyUI ignored SIGTERM for %.0fs; killing it", STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        port = self.command.port
        self.notifier.status(f"starting ComfyUI on :{port}")
        log.info("starting ComfyUI: %s", " ".join(self.command.argv))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command.argv,
                cwd=self.command.cwd,
                env=self.command.env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.error("cannot start ComfyUI (%s): %s", self.command.argv[0], exc)
            return 1
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        pinger = WatchdogPinger(self.notifier, [self._answering])
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                return await self._supervise(http, pinger)
        finally:
            await pinger.stop()
            if self.stop_event.is_set():
                self.notifier.stopping("stopping ComfyUI")
            await self._stop_child()
            self.notifier.close()

    async def _supervise(self, http: aiohttp.ClientSession, pinger: WatchdogPinger) -> int:
        assert self.proc is not None
        port, started = self.command.port, time.monotonic()
        while not await self._probe(http):
            if self.proc.returncode is not None:
                return self._child_exit_code()
            if self.stop_event.is_set():
                return 0
            if time.monotonic() - started > self.startup_timeout_s:
                log.error("ComfyUI did not answer on :%s within %.0fs", port, self.startup_timeout_s)
                return 1
            await self._wait(0.25)
        self.last_ok, self.probe_ok = time.monotonic(), True
        self.notifier.ready(f"ComfyUI answering on :{port} after {self.last_ok - started:.1f}s")
        log.info("ComfyUI answering on :%s", port)
        pinger.start()
        while True:
            await self._wait(self.probe_interval_s)
            if self.proc.returncode is not None:
                return self._child_exit_code()
            if self.stop_event.is_set():
                return 0
            self.probe_ok = await self._probe(http)
            if self.probe_ok:
                if time.monotonic() - self.last_ok > self.probe_interval_s * 2:
                    self.notifier.status(f"ComfyUI answering on :{port}")
                self.last_ok = time.monotonic()
            elif (silent := time.monotonic() - self.last_ok) > self.hang_after_s and self.kills_hangs:
                log.error("ComfyUI on :%s has not answered for %.1fs; killing it for a restart", port, silent)
                self.notifier.status(f"ComfyUI hung (no answer for {silent:.0f}s)")
                await self._stop_child(signal.SIGKILL)
                return 1
            else:
                self.notifier.status(f"ComfyUI on :{port} not answering for {silent:.0f}s")
