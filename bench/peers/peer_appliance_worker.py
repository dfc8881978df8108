"""Producer for the product row: `{}` echo jobs into the default queue through the public API
(`Queue.submit_many`, 1,000 per call). The workers are real `appliance worker --connector echo` processes that
bench/throughput.py starts itself, with default settings: this module has no worker of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout without `pip install -e`

import _harness  # noqa: E402

from appliance.queue import JobSpec, Queue  # noqa: E402

_queue: Any = None


async def setup(url: str) -> None:
    global _queue
    _queue = await Queue.connect(url)


async def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 1_000):
        await _queue.submit_many(
            [JobSpec(service="echo", payload={}) for _ in range(start, min(count, start + 1_000))]
        )


async def enqueue_one(t: float) -> None:
    await _queue.submit(JobSpec(service="echo", payload={}))


async def teardown() -> None:
    await _queue.close()


def run_worker(url: str, concurrency: int) -> None:
    raise SystemExit("the product row runs `appliance worker` processes (bench/throughput.py starts them)")


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
