"""Telling systemd how a process is: sd_notify messages and a watchdog that pings only while the process is healthy.

The protocol (sd_notify(3)) is one datagram of newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket named
by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). The `sdnotify` package sends it (no libsystemd
needed); around its `SystemdNotifier.notify` we keep what it leaves out: the address comes from the environment
mapping we are given (tests pass their own) rather than from `os.environ` at construction, the socket never blocks
the event loop, a failed send is logged and retried with a fresh connection on the next message instead of being
swallowed, and text goes out as UTF-8 (the package encodes latin-1). Without `$NOTIFY_SOCKET` (a shell, a
container) every call is a no-op.

The watchdog ping is the liveness signal systemd acts on (`WatchdogSec=` → kill and restart), so it is sent from
the event loop and only after every health check passed. The checks say whether *this process* is alive (its
loops turn, its own tasks run), never whether a dependency answers: a Redis outage is a degraded state that
the process reports and rides out, and a restart would not bring Redis back; a hung loop stops the pings, and
systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import sdnotify

log = logging.getLogger(__name__)

#: An async health check: returns True when healthy; False, an exception or a timeout count as unhealthy.
HealthCheck = Callable[[], Awaitable[bool]]


def _socket_address(value: str | None) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket; notifications disabled", value)
    return None


class _Transport(sdnotify.SystemdNotifier):
    """sdnotify's notifier, connected to an address we name.

    `SystemdNotifier.__init__` is not called: it reads `os.environ` itself and, unless `debug=True`, hides a
    failed connect by leaving `socket` None. We set the two attributes its `notify` uses ourselves.
    """

    def __init__(self, address: str | bytes) -> None:
        self.debug = True  # `notify` re-raises send errors only in debug mode; Notifier logs them
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block the event loop on a full receive queue: a dropped message beats a stalled loop.
        self.socket.setblocking(False)
        try:
            self.socket.connect(address)
        except OSError:
            self.socket.close()
            raise

    def send(self, text: str) -> None:
        # `notify` encodes latin-1; handing it the UTF-8 bytes spelled as latin-1 puts UTF-8 on the wire, as
        # sd_notify(3) expects (a status line may name a model in any script).
        self.notify(text.encode().decode("latin-1"))

    def close(self) -> None:
        self.socket.close()


class Notifier:
    """Sends sd_notify messages to `$NOTIFY_SOCKET`; does nothing when it is unset."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._pid = os.getpid() if pid is None else pid
        self._transport: _Transport | None = None
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message of `KEY=VALUE` lines; True if it was handed to the socket."""
        if self._address is None:
            return False
        try:
            if self._transport is None:
                self._transport = _Transport(self._address)
            self._transport.send("\n".join(lines))
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", lines[0].split("=", 1)[0] if lines else "", exc)
            # A connected socket stays bound to a receiver that may be gone (systemd re-executed): reconnect.
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished (for Type=notify units systemd now starts the units ordered after us)."""
        if status is not None and status != self._last_status:
            self._last_status = status
            return self.notify("READY=1", f"STATUS={status}")
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """STATUS=<text>, shown by `systemctl status`; sent only when it differs from the last one."""
        text = text.replace("\n", " ")
        if text == self._last_status:
            return False
        self._last_status = text
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic timestamp `Type=notify-reload` requires; send ready() when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start/stop time; must be re-sent before it runs out."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog timeout, the ping interval sd_watchdog_enabled(3) advises; None without a watchdog."""
        if self._address is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid.strip() != str(self._pid):
            return None  # the watchdog belongs to another process (our parent, say)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", self._watchdog_usec)
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class WatchdogPinger:
    """Pings WATCHDOG=1 every `interval_s` (half of WATCHDOG_USEC) while all health checks pass.

    Checks run concurrently, each bounded by `check_timeout_s`. One that fails stops the pings until it passes
    again; a blocked event loop stops them too, because the pings come from the loop itself.
    """

    def __init__(
        self,
        notifier: Notifier,
        checks: Sequence[HealthCheck] = (),
        *,
        interval_s: float | None = None,
        check_timeout_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.checks = list(checks)
        self.interval_s = interval_s if interval_s is not None else notifier.watchdog_interval_s()
        self.check_timeout_s = check_timeout_s
        #: Pings sent, and rounds whose checks failed (for /status and tests).
        self.pings = 0
        self.failed_rounds = 0
        #: Name and reason of the first failing check of the last round; None while healthy.
        self.failing: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and self.notifier.enabled

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="watchdog-pinger")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def run(self) -> None:
        if not self.enabled or self.interval_s is None:
            return
        interval = self.interval_s
        timeout = self.check_timeout_s if self.check_timeout_s is not None else interval / 2
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            problem = await self.check_once(timeout)
            if problem is None:
                self.notifier.watchdog()
                self.pings += 1
                if self.failing is not None:
                    log.warning("health checks pass again; watchdog pings resume")
            else:
                self.failed_rounds += 1
                if problem != self.failing:
                    log.error("health check failed (%s); watchdog pings stop until it passes", problem)
            self.failing = problem
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def check_once(self, timeout_s: float) -> str | None:
        """Run every check once; the first failure as "name: reason", or None when all pass."""
        results = await asyncio.gather(*(self._run_check(check, timeout_s) for check in self.checks))
        return next((r for r in results if r is not None), None)

    @staticmethod
    async def _run_check(check: HealthCheck, timeout_s: float) -> str | None:
        name = getattr(check, "__qualname__", None) or repr(check)
        try:
            ok = await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            return f"{name}: no answer within {timeout_s:g}s"
        except Exception as exc:  # any exception means unhealthy; it must not kill the pinger
            return f"{name}: {type(exc).__name__}: {exc}"
        return None if ok else f"{name}: returned false"


def hang_event_loop() -> None:
    """Test hook (APPLIANCE_TEST_HOOKS=1, SIGUSR2): block the event loop for good, like a hung process, so the
    watchdog tests can see systemd kill it."""
    log.warning("APPLIANCE_TEST_HOOKS: SIGUSR2 received, blocking the event loop forever")
    while True:
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point of this hook
