"""The private redis-server the demo and the tests start: a restart keeps its port."""

from __future__ import annotations

import socket
import threading

from appliance.localredis import LocalRedis


def test_a_restart_after_a_kill_waits_for_its_port_instead_of_moving_to_another() -> None:
    """Clients point at the server's port: a restart that found it taken for a moment (a client's reconnect from
    an ephemeral port, a connection to itself) and moved elsewhere left them reconnecting to nothing, and a test
    of recovery from an outage waited in vain (seen once in CI: tests/machine/test_supervisor.py's outage test)."""
    server = LocalRedis().start()
    try:
        url = server.url
        server.kill()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", server.port))
        holder.listen()
        release = threading.Timer(0.5, holder.close)
        release.start()
        try:
            server.start()
        finally:
            release.cancel()
            holder.close()
        assert server.url == url
        assert server.ping()
    finally:
        server.stop()
