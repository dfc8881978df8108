"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket collecting sd_notify messages."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable


class NotifySocket:
    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes, so not under pytest's long tmp_path.
        self._dir = tempfile.mkdtemp(prefix="ntf")
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return [line for m in self.messages for line in m.split("\n")]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float = 60.0) -> list[str]:
        """Wait until `predicate(lines)` holds; the timeout only guards against a hang, it is no assertion."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                lines = [line for m in self.messages for line in m.split("\n")]
                if predicate(lines):
                    return lines
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"notify messages never matched; got {lines[-20:]}")
                self._cond.wait(left)

    def wait_line(self, line: str, timeout_s: float = 60.0) -> list[str]:
        return self.wait_for(lambda lines: line in lines, timeout_s)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        self._thread.join(timeout=2)
        shutil.rmtree(self._dir, ignore_errors=True)
