"""End to end in a real headless Chromium: a real `appliance machine` process and a simulated GPU machine appear,
a job's progress bar moves as a worker reports progress through the queue API, a killed machine turns offline.
Screenshots go to $APPLIANCE_TEST_ARTIFACTS or tests/artifacts/."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.localredis import free_port
from appliance.queue import Capabilities, JobSpec, Queue, WorkerSession
from tests.monitor.helpers import SimulatedMachine, gpu_machine_state, running_monitor

CHROMIUM = os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(async_playwright is None, reason="the playwright Python package is not installed"),
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)),
        reason=f"no Chromium at {CHROMIUM} (set APPLIANCE_CHROMIUM)",
    ),
]

MID = "e2e-api-1"
GPU_MID = "e2e-gpu-1"


def artifacts_dir() -> Path:
    path = Path(
        os.environ.get("APPLIANCE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _start_machine(redis_url: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        {
            "APPLIANCE_REDIS__URL": redis_url,
            "APPLIANCE_MACHINE__ID": MID,
            "APPLIANCE_MACHINE__TYPE": "api",
            "APPLIANCE_MACHINE__POOL": "fast",
            "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "0.5",
            "APPLIANCE_MACHINE__REGISTRATION_TTL_S": "30",
            "APPLIANCE_CONNECTORS__ECHO__ENABLED": "true",
            "APPLIANCE_CONNECTORS__ECHO__SLOTS": "1",
            "APPLIANCE_HEALTH__HOST": "127.0.0.1",
            "APPLIANCE_HEALTH__PORT": str(free_port()),
        }
    )
    log = await asyncio.to_thread(
        open, artifacts_dir() / "monitor-e2e-machine.log", "wb"
    )  # kept for diagnosis
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance",
            "machine",
            "--unmanaged",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def _machine_log() -> str:
    return (artifacts_dir() / "monitor-e2e-machine.log").read_text(errors="replace")[-3000:]


async def test_dashboard_end_to_end(redis_url: str) -> None:
    assert async_playwright is not None
    machine = await _start_machine(redis_url)
    gpu = SimulatedMachine(redis_url, gpu_machine_state(GPU_MID))
    await gpu.start()
    queue = await Queue.connect(redis_url)
    session = None
    try:
        async with (
            running_monitor(redis_url, worker={"queues": ["default", "images"]}) as (_monitor, base),
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1500, "height": 1250})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base + "/")
            await page.wait_for_selector("body[data-synced='1']")

            # Both machines appear online: the real supervisor process and the simulated GPU machine.
            try:
                await page.wait_for_selector(f"[data-machine='{MID}'][data-online='1']", timeout=120_000)
            except Exception:
                raise AssertionError(
                    f"machine {MID} never showed online (exit {machine.returncode}); "
                    f"its log:\n{_machine_log()}"
                ) from None
            await page.wait_for_selector(f"[data-machine='{GPU_MID}'][data-online='1']")
            gpu_card = page.locator(f"[data-machine='{GPU_MID}']")
            assert "NVIDIA H100 80GB HBM3" in await gpu_card.inner_text()
            assert "2 restarts" in await gpu_card.locator("[data-service='comfyui@0']").inner_text()
            assert await page.locator("#conn-badge").inner_text() == "Live"

            # A job: submitted, claimed by the machine's echo worker, progress reported through the queue API.
            job = await queue.submit(JobSpec(service="echo", pool="fast", payload={"n": 1}))
            row = page.locator(f"tr[data-job='{job.id}']")
            await row.wait_for()
            # A job waiting for it shows blocked (not pending) until it completes.
            child = await queue.submit(JobSpec(service="echo", pool="fast", payload={}, after=[job.id]))
            await page.wait_for_selector(f"tr[data-job='{child.id}'][data-status='blocked']")
            assert "blocked" in await page.locator(f"tr[data-job='{child.id}']").inner_text()
            session = await WorkerSession.open(
                queue, f"{MID}-echo0", Capabilities(services=["echo"], pool="fast"), machine_id=MID
            )
            claimed = await session.claim()
            assert claimed is not None and claimed.job.id == job.id
            await page.wait_for_selector(f"tr[data-job='{job.id}'][data-status='claimed']")
            await queue.progress(job.id, claimed.token, 25, "sampling")
            await page.wait_for_selector(f"tr[data-job='{job.id}'] [role=progressbar][aria-valuenow='25']")
            await session.set_status(
                {
                    "state": "running",
                    "status": f"running job {job.id} (25%)",
                    "current_job_id": job.id,
                    "jobs": [{"id": job.id, "progress": 25}],
                }
            )
            worker_bar = f"[data-machine='{MID}'] [data-worker='{MID}-echo0'] [role=progressbar]"
            await page.wait_for_selector(worker_bar)
            await queue.progress(job.id, claimed.token, 70, "decoding")
            await page.wait_for_selector(f"tr[data-job='{job.id}'] [role=progressbar][aria-valuenow='70']")
            await page.wait_for_selector(f"{worker_bar}[aria-valuenow='70']")  # the card follows the job feed
            assert "decoding" in await row.inner_text()
            await page.screenshot(path=str(artifacts_dir() / "monitor-dashboard.png"), full_page=True)
            # Drawn at 70 %, not just labelled. Measured in one page-side call: rows are re-rendered on every update.
            await page.wait_for_function(
                """id => { const b = document.querySelector(`tr[data-job='${id}'] [role=progressbar]`);
                           if (!b) return false; const t = b.getBoundingClientRect().width;
                           const f = b.firstChild.getBoundingClientRect().width;
                           return t > 0 && f / t > 0.6 && f / t < 0.8; }""",
                arg=job.id,
            )

            await queue.complete(job.id, claimed.token, {"ok": True})
            await page.wait_for_selector(f"tr[data-job='{job.id}'][data-status='completed']")
            await page.wait_for_selector(f"tr[data-job='{child.id}']:not([data-status='blocked'])")

            # The fleet's other queue shows by its numbers.
            images = await Queue.connect(redis_url, queue_name="images")
            try:
                await images.submit(JobSpec(service="echo", payload={}))
            finally:
                await images.close()
            await page.wait_for_function(
                """() => { const r = document.querySelector("tr[data-queue='images']");
                           return r && r.cells[1].textContent === '1'; }"""
            )
            await page.wait_for_selector(f"tr[data-job='{job.id}'] [role=progressbar][aria-valuenow='100']")

            # The machine process dies without a word: it turns offline after 2 × its status interval.
            machine.send_signal(signal.SIGKILL)
            await machine.wait()
            await page.wait_for_selector(f"[data-machine='{MID}'][data-online='0']", timeout=30_000)
            reason = await page.locator(f"[data-machine='{MID}'] .offline-reason").inner_text()
            assert reason.startswith("silent for"), reason
            # The simulated GPU machine keeps publishing and stays online.
            assert await gpu_card.get_attribute("data-online") == "1"
            await page.screenshot(path=str(artifacts_dir() / "monitor-offline.png"), full_page=True)
            assert errors == [], errors
            await browser.close()
    finally:
        if machine.returncode is None:
            machine.kill()
            await machine.wait()
        if session is not None:
            await session.close()
        await gpu.stop()
        await queue.close()
