"""The webhook metrics count what happened, pass `promtool check metrics`, and carry no secret or URL."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.queue import Queue
from appliance.webhooks import WebhookRequest, Webhooks
from tests.webhooks.conftest import eventually, fast_settings
from tests.webhooks.receiver import Receiver


async def test_metrics_count_outcomes_without_secrets(queue: Queue, receiver: Receiver) -> None:
    registry = CollectorRegistry(auto_describe=True)
    webhooks = await Webhooks.open(queue, fast_settings(max_age_s=1), registry)
    task = asyncio.create_task(webhooks.run_delivery())
    try:
        secret = receiver.secret = await webhooks.secret("acme")
        good, bad = [await queue.submit({"service": "echo"}) for _ in range(2)]
        await webhooks.register("acme", good.id, WebhookRequest(url=receiver.url))
        await webhooks.register("acme", bad.id, WebhookRequest(url=receiver.at("/moved") + "?k=urltoken"))
        for job in (good, bad):
            await queue.cancel(job.id)

        def value(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        await eventually(
            lambda: value("appliance_webhook_attempts_total", outcome="given_up") == 1,
            "the redirect given up",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await webhooks.close()
    assert value("appliance_webhook_events_queued_total", type="job.cancelled") == 2
    assert value("appliance_webhook_attempts_total", outcome="delivered") == 1
    assert value("appliance_webhook_attempts_total", outcome="retried") >= 1
    assert value("appliance_webhook_attempt_duration_seconds_count") >= 3
    text = generate_latest(registry).decode()
    assert secret.removeprefix("whsec_") not in text and "urltoken" not in text and "acme" not in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    checked = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
