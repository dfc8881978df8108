"""Fixtures: stand-in services on free loopback ports, storage in a temp dir."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from appliance.standins.comfyui import Behaviour, ComfyStandin, make_app
from appliance.worker.storage import LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "outputs", public_base_url="http://files.test/out")


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[tuple[ComfyStandin, str]]:
    state = ComfyStandin(tmp_path / "comfy", Behaviour(step_delay_s=0.01))
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


def read_bytes(path: str | None) -> bytes:
    """Read a stored output (sync on purpose: tiny files, test-only)."""
    assert path is not None
    return Path(path).read_bytes()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition()` holds (no deadline: pytest's own timeout guards hangs)."""
    for _ in itertools.count():
        if condition():
            return
        await asyncio.sleep(0.01)
