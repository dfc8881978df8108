"""Fixtures of the worker tests: `harness` runs real `appliance worker` processes on the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.worker.test_worker_process import Harness


@pytest.fixture
async def harness(tmp_path: Path, redis_url: str) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, redis_url)
    await h.connect()
    yield h
    await h.close()
