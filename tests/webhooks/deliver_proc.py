"""An API process's delivery worker alone, as a process the tests can kill -9: `python deliver_proc.py REDIS_URL`."""

from __future__ import annotations

import asyncio
import sys

from appliance.queue import Queue, QueueSettings
from tests.webhooks.conftest import fast_settings


async def main(url: str) -> None:
    queue = await Queue.connect(url, settings=QueueSettings(lease_ms=1000))
    from appliance.webhooks import Webhooks

    webhooks = await Webhooks.open(queue, fast_settings(timeout_s=1.0))
    print("ready", flush=True)
    await webhooks.run_delivery()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
