"""ComfyUI connector against the protocol-faithful stand-in (real HTTP + WebSocket on loopback)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.standins import process
from appliance.standins.media import Frame, encode_png
from appliance.worker.connectors import ConnectorOptions, create_connector
from appliance.worker.connectors.base import ConnectorJob, JobCancelled, PermanentError, RetryableError
from appliance.worker.connectors.comfyui import ComfyUIConnector, prompt_id_for
from appliance.worker.connectors.comfyui_events import ProgressTracker
from appliance.worker.storage import LocalStorage
from tests.worker.connectors.conftest import read_bytes, wait_until

FAST = {
    "poll_interval_s": 5.0,
    "fast_poll_interval_s": 0.05,
    "unreachable_grace_s": 3.0,
    "cancel_grace_s": 5.0,
}


def graph(steps: int = 3) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 4, "batch_size": 2, "color": 0xFF0000},
        },
        "2": {"class_type": "StandinSampler", "inputs": {"image": ["1", 0], "steps": steps}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "inv"}},
        "5": {
            "class_type": "SaveAnimatedGIF",
            "inputs": {"images": ["1", 0], "filename_prefix": "anim", "fps": 4.0},
        },
        "6": {"class_type": "SaveAudio", "inputs": {"seconds": 0.05, "filename_prefix": "snd"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def job(
    job_id: str = "job-1", payload: dict[str, Any] | None = None, timeout_s: float | None = None
) -> ConnectorJob:
    return ConnectorJob(
        id=job_id, service="comfyui", payload=payload or {"workflow": graph()}, attempt=1, timeout_s=timeout_s
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []
        self.seen = asyncio.Event()

    async def __call__(self, percent: float, message: str | None) -> None:
        self.calls.append((percent, message))
        self.seen.set()


async def make(url: str, storage: LocalStorage, **extra: Any) -> ComfyUIConnector:
    connector = create_connector(
        "comfyui",
        options=ConnectorOptions(base_url=url, default_timeout_s=60, extra={**FAST, **extra}),
        storage=storage,
    )
    assert isinstance(connector, ComfyUIConnector)
    await connector.start()
    return connector


async def control(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession() as s:
        if body is None:
            async with s.get(url + path) as r:
                return await r.json()
        async with s.post(url + path, json=body) as r:
            assert r.status == 200, await r.text()


async def test_success_collects_every_output_kind_and_reports_progress(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    connector = await make(url, storage)
    progress = Recorder()
    result = await connector.process(job(), progress)
    await connector.close()

    kinds = sorted(o.kind for o in result.outputs)
    assert kinds == ["audio", "gifs", "images", "images"]  # PreviewImage (type temp) skipped
    for out in result.outputs:
        data = read_bytes(out.path)
        assert out.size == len(data) > 0
        assert out.name.startswith("job-1/")
        assert out.url == f"http://files.test/out/{out.name}"
    pngs = [read_bytes(o.path) for o in result.outputs if o.kind == "images"]
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert read_bytes(next(o.path for o in result.outputs if o.kind == "gifs")).startswith(b"GIF89a")
    assert read_bytes(next(o.path for o in result.outputs if o.kind == "audio"))[:4] == b"RIFF"
    assert {o.node for o in result.outputs} == {"4", "5", "6"}
    assert result.service_job_id == prompt_id_for("job-1")
    percents = [p for p, _ in progress.calls]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any(0 < p < 100 for p in percents)  # sampler steps were mapped into the middle
    assert state.stats["prompts_accepted"] == 1


async def test_validation_error_is_permanent_and_lists_models(comfy, storage: LocalStorage) -> None:
    _, url = comfy
    connector = await make(url, storage)
    bad = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "x"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(PermanentError) as info:
        await connector.process(job(payload={"prompt": bad}), Recorder())
    err = info.value
    assert err.code == "model_not_found"
    assert "node 1 (CheckpointLoaderSimple): value_not_in_list" in err.message
    assert "sd_xl_base_1.0.safetensors" in err.message  # the available models are named
    assert "node 2 (LoraLoader)" in err.message and "detail.safetensors" in err.message
    assert "1" in err.details["node_errors"]

    # Partly valid: ComfyUI would run only the valid outputs; the connector refuses to lose some silently.
    with pytest.raises(PermanentError, match="node 2 \\(StandinSampler\\): value_bigger_than_max"):
        await connector.process(job("job-p", {"workflow": graph(steps=2_000_000)}), Recorder())

    with pytest.raises(PermanentError, match="NoSuchNode does not exist"):
        await connector.process(
            job("job-2", {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}), Recorder()
        )
    with pytest.raises(PermanentError, match="workflow"):
        await connector.process(job("job-3", {"nothing": 1}), Recorder())
    await connector.close()


async def test_execution_error_permanent_and_oom_retryable(comfy, storage: LocalStorage) -> None:
    _, url = comfy
    connector = await make(url, storage)
    await control(url, "/__standin/config", {"fail_mode": "execution_error", "fail_times": 1})
    with pytest.raises(PermanentError) as info:
        await connector.process(job("e1"), Recorder())
    assert info.value.code == "execution_error" and info.value.details["node_id"] == "2"
    assert "simulated node failure" in info.value.message

    await control(url, "/__standin/config", {"fail_mode": "oom", "fail_times": 1})
    with pytest.raises(RetryableError) as oom:
        await connector.process(job("e2"), Recorder())
    assert oom.value.code == "oom"
    # The retry of the same job finds the failed prompt in history and runs it again.
    result = await connector.process(job("e2"), Recorder())
    assert len(result.outputs) == 4
    await connector.close()


async def test_ws_drop_mid_job_completes_through_history(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    connector = await make(url, storage)
    await control(url, "/__standin/config", {"fail_mode": "drop_ws", "fail_times": 1})
    result = await connector.process(job(payload={"workflow": graph(steps=20)}), Recorder())
    assert len(result.outputs) == 4
    assert state.stats["prompts_accepted"] == 1
    await connector.close()


async def test_reclaim_of_finished_prompt_collects_without_rerun(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    first = await make(url, storage)
    await first.process(job("again"), Recorder())
    await first.close()
    second = await make(url, storage)  # another worker re-claims the same job
    result = await second.process(job("again"), Recorder())
    await second.close()
    assert len(result.outputs) == 4
    assert state.stats["prompt_posts"] == 1 and state.stats["executions"] == 1


async def test_reclaim_of_queued_prompt_follows_it(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    await control(url, "/__standin/pause", {"paused": True})
    first = await make(url, storage)
    task = asyncio.create_task(first.process(job("q"), Recorder()))
    await wait_until(lambda: state.stats["prompts_accepted"] > 0)
    task.cancel()  # the first worker dies while the prompt waits in ComfyUI's queue
    await asyncio.gather(task, return_exceptions=True)
    await first.close()
    second = await make(url, storage)
    follow = asyncio.create_task(second.process(job("q"), Recorder()))
    await asyncio.sleep(0.1)
    await control(url, "/__standin/pause", {"paused": False})
    result = await follow
    await second.close()
    assert len(result.outputs) == 4
    assert state.stats["prompt_posts"] == 1


async def test_cancel_interrupts_running_prompt(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    await control(url, "/__standin/config", {"step_delay_s": 0.05})
    connector = await make(url, storage)
    progress = Recorder()
    task = asyncio.create_task(connector.process(job("c", {"workflow": graph(steps=10_000)}), progress))
    await progress.seen.wait()
    await connector.cancel("c")
    await connector.cancel("c")  # idempotent
    with pytest.raises(JobCancelled):
        await task
    assert state.stats["interrupts"] == 1
    history = await control(url, f"/history/{prompt_id_for('c')}")
    messages = [m[0] for m in history[prompt_id_for("c")]["status"]["messages"]]
    assert "execution_interrupted" in messages
    await connector.close()


async def test_cancel_of_pending_prompt_deletes_it_from_queue(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    await control(url, "/__standin/pause", {"paused": True})
    connector = await make(url, storage)
    task = asyncio.create_task(connector.process(job("p"), Recorder()))
    await wait_until(lambda: state.stats["prompts_accepted"] > 0)
    await connector.cancel("p")
    with pytest.raises(JobCancelled):
        await task
    assert state.stats["queue_deletes"] == 1 and state.pending == []
    await connector.close()


async def test_restart_mid_job_losing_history_is_retryable(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    await control(url, "/__standin/config", {"step_delay_s": 0.05})
    connector = await make(url, storage)
    progress = Recorder()
    task = asyncio.create_task(connector.process(job("r", {"workflow": graph(steps=10_000)}), progress))
    await progress.seen.wait()
    await control(url, "/__standin/restart", {})
    with pytest.raises(RetryableError) as info:
        await task
    assert info.value.code == "prompt_lost"
    await connector.close()


async def test_hung_node_hits_job_timeout(comfy, storage: LocalStorage) -> None:
    _, url = comfy
    await control(url, "/__standin/config", {"fail_mode": "hang"})
    connector = await make(url, storage)
    with pytest.raises(RetryableError) as info:
        await connector.process(job("h", timeout_s=0.5), Recorder())
    assert info.value.code == "timeout"
    await connector.close()


async def test_uploads_base64_images_before_submitting(comfy, storage: LocalStorage) -> None:
    state, url = comfy
    connector = await make(url, storage)
    png = encode_png(Frame.solid(3, 2, 0x00FF00))
    payload = {
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        },
        "images": [{"name": "in.png", "image": base64.b64encode(png).decode()}],
    }
    result = await connector.process(job("u", payload), Recorder())
    assert state.stats["uploads"] == 1 and len(result.outputs) == 1
    with pytest.raises(PermanentError, match="base64"):
        await connector.process(
            job("u2", {**payload, "images": [{"name": "x.png", "image": "%%%"}]}), Recorder()
        )
    await connector.close()


async def test_capabilities_and_health(comfy, storage: LocalStorage) -> None:
    _, url = comfy
    connector = await make(url, storage)
    caps = await connector.capabilities()
    assert caps.services == ["comfyui"]
    assert "sd_xl_base_1.0.safetensors" in caps.models["comfyui"]
    assert caps.extra["model_folders"]["loras"] == ["detail.safetensors"]
    assert caps.gpu_memory_gb == 24.0
    assert await connector.health() is True
    await connector.close()


async def test_unreachable_comfyui_is_retryable(storage: LocalStorage) -> None:
    connector = await make("http://127.0.0.1:9", storage)  # discard port: nothing listens
    assert await connector.health() is False
    with pytest.raises(RetryableError) as info:
        await connector.process(job(), Recorder())
    assert info.value.code == "unreachable"
    await connector.close()


@pytest.mark.slow
async def test_standin_process_killed_mid_job_is_retryable(tmp_path: Path, storage: LocalStorage) -> None:
    proc = await asyncio.to_thread(
        process.start, "comfyui", "--step-delay", "0.05", "--data-dir", str(tmp_path / "d")
    )
    try:
        connector = await make(proc.url, storage, unreachable_grace_s=1.0)
        progress = Recorder()
        task = asyncio.create_task(connector.process(job("k", {"workflow": graph(steps=10_000)}), progress))
        await progress.seen.wait()
        proc.kill()
        with pytest.raises(RetryableError) as info:
            await task
        assert info.value.code == "unreachable"
        await connector.close()
    finally:
        proc.stop()


def test_standin_rejects_bad_cli_flag() -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        process.start("comfyui", "--fail-mode", "explode")


def test_prompt_id_is_stable_per_job() -> None:
    assert prompt_id_for("a") == prompt_id_for("a") != prompt_id_for("b")


# --- JSON outputs and what "done" means ---------------------------------------------------------------------------


def json_graph(text: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "img"}},
        "3": {"class_type": "StandinSaveJSON", "inputs": {"text": text, "filename_prefix": "meta"}},
    }


async def test_a_json_output_is_stored_as_its_bytes(comfy, storage: LocalStorage) -> None:
    # /view serves a .json output as application/json (as ComfyUI does); the connector used to parse it and
    # then refuse the dict as "output_missing" on every attempt until the job was dead.
    _, url = comfy
    text = '{"seed": 7,  "tags": ["a", "b"]}\n'  # stored byte for byte, spacing included
    connector = await make(url, storage)
    result = await connector.process(job("js", {"workflow": json_graph(text)}), Recorder())
    await connector.close()
    (stored,) = [o for o in result.outputs if o.name.endswith(".json")]
    assert read_bytes(stored.path) == text.encode() and stored.content_type == "application/json"
    assert stored.node == "3" and len(result.outputs) == 2
    async with aiohttp.ClientSession() as s:
        params = {"filename": stored.name.split("/")[-1], "type": "output"}
        async with s.get(url + "/view", params=params) as r:
            assert r.status == 200 and r.content_type == "application/json"


async def ws_messages(
    url: str, prompt: dict[str, Any], *, interrupt_after_progress: bool = False
) -> tuple[str, list]:
    """Every WS message the stand-in sends for one prompt, up to its final `executing {node: null}`."""
    client_id = "capture"
    messages: list[tuple[str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
        async with s.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            prompt_id = (await r.json())["prompt_id"]
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = msg.json()
            data = event["data"]
            if data.get("prompt_id") != prompt_id:
                continue
            messages.append((event["type"], data))
            if event["type"] == "progress" and interrupt_after_progress:
                interrupt_after_progress = False
                async with s.post(url + "/interrupt", json={}) as r:
                    assert r.status == 200
            if event["type"] == "executing" and data.get("node") is None:
                break
    return prompt_id, messages


@pytest.mark.parametrize("how", ["success", "execution_error", "execution_interrupted"])
async def test_only_a_successful_prompt_reaches_100_percent(comfy, how: str) -> None:
    # ComfyUI sends `executing {node: null}` after every prompt, failed and interrupted ones too; progress used
    # to take it for success and show 100 % on a failed job.
    _, url = comfy
    if how == "execution_error":
        await control(url, "/__standin/config", {"fail_mode": "execution_error", "fail_times": 1})
    if how == "execution_interrupted":
        await control(url, "/__standin/config", {"step_delay_s": 0.05})
    prompt = graph(steps=50 if how == "execution_interrupted" else 3)
    prompt_id, messages = await ws_messages(
        url, prompt, interrupt_after_progress=how == "execution_interrupted"
    )
    kinds = [kind for kind, _ in messages]
    # The order ComfyUI sends them in: start, cached, per node executing (progress, executed), the outcome,
    # then the final executing with node null.
    assert kinds[:2] == ["execution_start", "execution_cached"] and kinds[2] == "executing"
    outcome = "execution_success" if how == "success" else how
    assert kinds[-2:] == [outcome, "executing"] and messages[-1][1]["node"] is None
    assert kinds.count(outcome) == 1
    tracker = ProgressTracker(prompt_id, set(prompt))
    for kind, data in messages:
        tracker.handle(kind, data)
    assert tracker.ended
    if how == "success":
        assert tracker.finished and tracker.percent == 100.0
    else:
        assert not tracker.finished and tracker.percent < 100.0


async def test_a_failed_prompt_never_reports_100_percent(comfy, storage: LocalStorage) -> None:
    _, url = comfy
    connector = await make(url, storage)
    await control(url, "/__standin/config", {"fail_mode": "execution_error", "fail_times": 1})
    progress = Recorder()
    with pytest.raises(PermanentError):
        await connector.process(job("f100", {"workflow": graph(steps=3)}), progress)
    await connector.close()
    assert progress.calls and max(p for p, _ in progress.calls) < 100.0
