"""sd_notify over a real AF_UNIX datagram socket (path and abstract), and the health-gated watchdog pinger.

Assertions count messages and check calls; none depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.notify import Notifier, WatchdogPinger

RECV_TIMEOUT_S = 30  # only bounds a hang; a passing test returns as soon as the datagram is there


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound receiving socket and the NOTIFY_SOCKET value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        name = str(path)
    else:
        abstract = f"appliance-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + abstract.encode())
        name = "@" + abstract
    sock.settimeout(RECV_TIMEOUT_S)
    yield sock, name
    sock.close()


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued on `sock`, without waiting."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(RECV_TIMEOUT_S)
    return messages


async def receive(sock: socket.socket) -> str:
    return (await asyncio.to_thread(sock.recv, 4096)).decode()


def test_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.status("starting ComfyUI")
    assert sock.recv(4096) == b"STATUS=starting ComfyUI"
    assert not notifier.status("starting ComfyUI")  # unchanged text is not re-sent
    assert notifier.status("line\nbreak")
    assert sock.recv(4096) == b"STATUS=line break"
    assert notifier.watchdog() and notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1" and sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    assert notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and int(reloading[1].removeprefix("MONOTONIC_USEC=")) > 0
    assert notifier.extend_timeout(90)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert pending(sock) == []
    notifier.close()


def test_ready_with_status(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    notifier.ready(status="serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert not notifier.status("serving")


def test_from_another_process(notify_socket: tuple[socket.socket, str]) -> None:
    """The way systemd sees it: a separate process reads NOTIFY_SOCKET from its environment."""
    sock, name = notify_socket
    code = "from appliance.notify import Notifier; n = Notifier(); n.ready(); n.status('up')"
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": name}, check=True, timeout=60
    )
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STATUS=up"


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.status("x")
    assert notifier.watchdog_interval_s() is None
    assert not WatchdogPinger(notifier, []).enabled


def test_send_to_missing_socket_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled and notifier.ready() is False
    assert "sd_notify READY failed" in caplog.text


def test_text_goes_out_as_utf8(notify_socket: tuple[socket.socket, str]) -> None:
    """sdnotify encodes latin-1; systemd reads UTF-8, and a status may name anything."""
    sock, name = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.status("lädt flux → GPU 0")
    assert sock.recv(4096) == "STATUS=lädt flux → GPU 0".encode()
    notifier.close()


def test_a_receiver_that_comes_back_gets_the_next_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sending socket is connected; when its receiver goes away (systemd re-executed) it reconnects."""
    path = tmp_path / "notify.sock"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready()
    assert first.recv(4096) == b"READY=1"
    first.close()
    path.unlink()
    assert notifier.status("nobody listens") is False
    assert "sd_notify STATUS failed" in caplog.text
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(str(path))
    second.settimeout(RECV_TIMEOUT_S)
    try:
        assert notifier.watchdog()
        assert second.recv(4096) == b"WATCHDOG=1"
    finally:
        second.close()
        notifier.close()


def test_watchdog_interval() -> None:
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}).watchdog_interval_s() == 15
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42
        ).watchdog_interval_s()
        == 15
    )
    # the watchdog of another process is not ours to feed
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42
        ).watchdog_interval_s()
        is None
    )
    assert Notifier({"NOTIFY_SOCKET": "@x"}).watchdog_interval_s() is None
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}).watchdog_interval_s() is None
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"}).watchdog_interval_s() is None
    assert Notifier({"NOTIFY_SOCKET": "relative.sock"}).enabled is False


class Switch:
    """A health check whose answer the test flips; counts its calls so the test can wait in rounds."""

    def __init__(self) -> None:
        self.healthy = True
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> bool:
        self.calls += 1
        self.called.set()
        return self.healthy

    async def rounds(self, n: int) -> None:
        """Wait until the pinger has run `n` more rounds of checks."""
        target = self.calls + n
        while self.calls < target:
            self.called.clear()
            await asyncio.wait_for(self.called.wait(), RECV_TIMEOUT_S)


async def test_pings_stop_while_a_check_fails_and_resume(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    # WATCHDOG_USEC = 40 ms → a ping every 20 ms while healthy
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())})
    switch = Switch()

    async def always_fine() -> bool:
        return True

    pinger = WatchdogPinger(notifier, [always_fine, switch])
    assert pinger.interval_s == pytest.approx(0.02)
    pinger.start()
    try:
        for _ in range(3):
            assert await receive(sock) == "WATCHDOG=1"

        switch.healthy = False
        await switch.rounds(1)  # from this round on every check answers False
        pending(sock)  # pings of rounds that passed before the switch
        await switch.rounds(3)
        assert pending(sock) == []
        assert pinger.failing is not None and "returned false" in pinger.failing
        assert pinger.failed_rounds >= 3

        switch.healthy = True
        assert await receive(sock) == "WATCHDOG=1"
        await switch.rounds(1)
        assert pinger.failing is None
    finally:
        await pinger.stop()


async def test_a_hanging_or_raising_check_stops_pings(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000"})
    switch = Switch()
    never = asyncio.Event()
    mode = {"hang": False, "raise": False}

    async def dependency() -> bool:
        if mode["hang"]:
            await never.wait()  # never answers: the per-check timeout must end it
        if mode["raise"]:
            raise ConnectionError("redis down")
        return True

    pinger = WatchdogPinger(notifier, [switch, dependency], check_timeout_s=0.01)
    pinger.start()
    try:
        assert await receive(sock) == "WATCHDOG=1"
        for key, reason in (("hang", "no answer within 0.01s"), ("raise", "ConnectionError: redis down")):
            mode[key] = True
            await switch.rounds(1)
            pending(sock)
            await switch.rounds(3)
            assert pending(sock) == [], key
            assert pinger.failing is not None and reason in pinger.failing
            mode[key] = False
            assert await receive(sock) == "WATCHDOG=1"
    finally:
        await pinger.stop()


async def test_pinger_without_watchdog_returns_at_once() -> None:
    switch = Switch()
    pinger = WatchdogPinger(Notifier({}), [switch])
    await asyncio.wait_for(pinger.start(), RECV_TIMEOUT_S)
    assert switch.calls == 0 and pinger.pings == 0
