"""A private `redis-server` on a free loopback port: the demo's embedded default and the tests' fixture."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedisError(RuntimeError):
    pass


class LocalRedis:
    """Start, kill and restart a throwaway redis-server bound to 127.0.0.1.

    >>> server = LocalRedis().start()
    >>> server.url
    'redis://127.0.0.1:...'
    >>> server.stop()
    """

    def __init__(
        self,
        port: int | None = None,
        extra_args: list[str] | None = None,
        executable: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        self._port_was_picked = port is None
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.executable = executable or shutil.which("redis-server") or "redis-server"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="appliance-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        #: Whether it ran once: a restart keeps its port (`_restart`).
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        if shutil.which(self.executable) is None and not os.path.exists(self.executable):
            raise LocalRedisError(
                "redis-server not found on PATH: install it (Debian: apt-get install redis-server) "
                "or set APPLIANCE_REDIS_URL to an existing server"
            )
        if self._started:
            return self._restart(timeout_s)
        # A port picked for us may be taken between picking and binding (or its cluster bus port, +10000, may
        # be busy): pick another and try again.
        for _ in range(5):
            try:
                return self._start_once(timeout_s)
            except LocalRedisError as exc:
                if not self._port_was_picked or "Address already in use" not in str(exc):
                    raise
                self.port = free_port()
        return self._start_once(timeout_s)

    def _restart(self, timeout_s: float) -> LocalRedis:
        """Start again on the same port: its clients point at it, so a server moved to another port would never
        be reached (a test of recovery from an outage then waits in vain). While the server was away another
        socket may have taken the port for a moment (a client's reconnect from an ephemeral port, or a
        connection to itself): wait for it to be free instead."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._start_once(timeout_s)
            except LocalRedisError as exc:
                if "Address already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _start_once(self, timeout_s: float) -> LocalRedis:
        logfile = self.workdir / f"redis-{self.port}.log"
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(logfile),
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = logfile.read_text(errors="replace") if logfile.exists() else ""
                self.process = None
                raise LocalRedisError(f"redis-server exited at start: {log.strip()[-500:]}")
            if self.ping():
                self._started = True
                return self
            time.sleep(0.02)
        self.stop()
        raise LocalRedisError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                # A password-protected server answers NOAUTH: it is up all the same.
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, timeout_s: float = 10.0) -> LocalRedis:
        self.kill()
        return self.start(timeout_s)

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
