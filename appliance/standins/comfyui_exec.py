"""Runs one prompt in the ComfyUI stand-in, emitting ComfyUI's WS event sequence.

Per prompt: execution_start, execution_cached, then per node executing / progress_state / progress /
executed (output nodes), then execution_success | execution_error | execution_interrupted; the server
then stores history and sends the final `executing {node: null}`.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.standins import comfyui_nodes as nodes
from appliance.standins.media import Frame, decode_png_size, encode_gif, encode_png, encode_wav

if TYPE_CHECKING:
    from appliance.standins.comfyui_state import ComfyStandin


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException"""


class SimulatedError(Exception):
    def __init__(self, message: str, exception_type: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


@dataclass
class ExecResult:
    success: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)


class Executor:
    def __init__(self, server: ComfyStandin) -> None:
        self.server = server
        self.current_node: str | None = None
        self._interrupt = False
        self._counter = 0

    def interrupt(self) -> None:
        self._interrupt = True

    def _check_interrupt(self) -> None:
        if self._interrupt:
            self._interrupt = False
            raise Interrupted("Processing interrupted")

    async def _message(
        self, result: ExecResult, event: str, data: dict[str, Any], broadcast: bool = False
    ) -> None:
        """PromptExecutor.add_message: recorded in history; sent only with a client_id (or broadcast)."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        result.messages.append([event, data])
        if self.server.client_id is not None or broadcast:
            await self.server.send(event, data, self.server.client_id)

    async def execute(self, prompt_id: str, prompt: dict[str, Any], outputs: list[str]) -> ExecResult:
        self._interrupt = False
        result = ExecResult(success=True)
        sid = self.server.client_id
        await self._message(result, "execution_start", {"prompt_id": prompt_id})
        await self._message(result, "execution_cached", {"nodes": [], "prompt_id": prompt_id})
        order = nodes.execution_order(prompt, outputs)
        failure = self.server.next_failure()
        target = next((n for n in order if prompt[n]["class_type"] == "StandinSampler"), None)
        target = target or next(n for n in order if n in outputs)
        values: dict[str, tuple[Any, ...]] = {}
        executed: list[str] = []
        for node_id in order:
            node = prompt[node_id]
            self.current_node = node_id
            await self.server.send(
                "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, sid
            )
            try:
                self._check_interrupt()
                inputs = {
                    k: values[v[0]][v[1]] if nodes._is_link(v) else v
                    for k, v in (node.get("inputs") or {}).items()
                }
                mode = failure if node_id == target else "none"
                out, ui = await self._run_node(prompt_id, node_id, node["class_type"], inputs, mode)
            except Interrupted:
                result.success = False
                await self._message(
                    result,
                    "execution_interrupted",
                    _failed_at(prompt_id, node_id, node, executed),
                    broadcast=True,
                )
                break
            except SimulatedError as exc:
                result.success = False
                await self._message(
                    result, "execution_error", _error_data(prompt_id, node_id, node, executed, exc)
                )
                break
            values[node_id] = out
            executed.append(node_id)
            await self._node_done(result, prompt_id, node_id, ui, sid)
        else:
            await self._message(result, "execution_success", {"prompt_id": prompt_id})
        self.current_node = None
        return result

    async def _node_done(
        self, result: ExecResult, prompt_id: str, node_id: str, ui: dict[str, Any] | None, sid: str | None
    ) -> None:
        """A node finished: progress_state says so, and an output node's files go to history and `executed`."""
        await self._progress_state(prompt_id, node_id, 1, 1, "finished", sid)
        if ui is None:
            return
        result.outputs[node_id] = ui
        result.meta[node_id] = {
            "node_id": node_id,
            "display_node": node_id,
            "parent_node": None,
            "real_node_id": node_id,
        }
        await self.server.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
            sid,
        )

    async def _progress_state(
        self, prompt_id: str, node_id: str, value: float, maximum: float, state: str, sid: str | None
    ) -> None:
        await self.server.send(
            "progress_state",
            {
                "prompt_id": prompt_id,
                "nodes": {
                    node_id: {
                        "value": value,
                        "max": maximum,
                        "state": state,
                        "node_id": node_id,
                        "prompt_id": prompt_id,
                        "display_node_id": node_id,
                        "parent_node_id": None,
                        "real_node_id": node_id,
                    }
                },
            },
            sid,
        )

    async def _fail(self, mode: str) -> None:
        if mode == "execution_error":
            raise SimulatedError("standin: simulated node failure", "ValueError")
        if mode == "oom":
            raise SimulatedError(
                "Allocation on device \nThis error means you ran out of memory on your GPU.",
                "torch.OutOfMemoryError",
            )
        if mode == "hang":
            await asyncio.Event().wait()  # a custom node stuck in a loop: never checks for interrupts
        if mode == "crash" and self.server.behaviour.allow_exit:
            os._exit(17)
        if mode == "crash":
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.server.restart()))
            await asyncio.sleep(3600)

    def _save(self, kind: str, prefix: str, ext: str, data: bytes) -> dict[str, Any]:
        self._counter += 1
        filename = f"{os.path.basename(str(prefix)) or 'ComfyUI'}_{self._counter:05d}_.{ext}"
        folder = "temp" if kind == "temp" else "output"
        (self.server.dirs[folder] / filename).write_bytes(data)
        return {"filename": filename, "subfolder": "", "type": folder}

    async def _sample(self, prompt_id: str, node_id: str, steps: int, failure: str) -> None:
        """StandinSampler: one progress (and progress_state) per step; a fail mode strikes after step 1."""
        sid = self.server.client_id
        for step in range(1, steps + 1):
            await asyncio.sleep(self.server.behaviour.step_delay_s)
            self._check_interrupt()
            await self._progress_state(prompt_id, node_id, step, steps, "running", sid)
            await self.server.send(
                "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}, sid
            )
            if step == 1 and failure == "drop_ws":
                await self.server.drop_sockets()
            if step == 1 and failure not in ("none", "drop_ws"):
                await self._fail(failure)

    async def _run_node(
        self, prompt_id: str, node_id: str, class_type: str, inputs: dict[str, Any], failure: str
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        if class_type == "StandinSampler":
            await self._sample(prompt_id, node_id, int(inputs.get("steps", 4)), failure)
            return (inputs["image"],), None
        await asyncio.sleep(0)
        if failure not in ("none", "drop_ws"):
            await self._fail(failure)
        saved = self._output_node(class_type, inputs)
        if saved is not None:
            return (), saved
        if class_type == "EmptyImage":
            frame = Frame.solid(
                int(inputs.get("width", 512)), int(inputs.get("height", 512)), int(inputs.get("color", 0))
            )
            return ([frame] * int(inputs.get("batch_size", 1)),), None
        if class_type == "ImageInvert":
            return ([f.inverted() for f in inputs["image"]],), None
        if class_type == "LoadImage":
            data = (self.server.dirs["input"] / inputs["image"]).read_bytes()
            width, height = decode_png_size(data)
            return ([Frame.solid(width, height, 0x808080)], None), None
        # Loaders: model handles are opaque placeholders.
        return tuple(f"{class_type}:{node_id}:{i}" for i in range(3)), None

    def _output_node(self, class_type: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The `ui` of an output node (its files saved), or None for any other node."""
        if class_type in ("SaveImage", "PreviewImage"):
            kind = "temp" if class_type == "PreviewImage" else "output"
            files = [
                self._save(kind, inputs.get("filename_prefix", "ComfyUI"), "png", encode_png(f))
                for f in inputs["images"]
            ]
            return {"images": files}
        if class_type == "SaveAnimatedGIF":
            entry = self._save(
                "output",
                inputs.get("filename_prefix", "ComfyUI"),
                "gif",
                encode_gif(inputs["images"], delay_cs=int(100 / float(inputs.get("fps", 8.0)))),
            )
            return {"gifs": [{**entry, "format": "image/gif", "frame_rate": inputs.get("fps", 8.0)}]}
        if class_type == "SaveAudio":
            entry = self._save(
                "output",
                inputs.get("filename_prefix", "ComfyUI"),
                "wav",
                encode_wav(float(inputs.get("seconds", 0.25))),
            )
            return {"audio": [entry]}
        if class_type == "StandinSaveJSON":
            entry = self._save(
                "output",
                inputs.get("filename_prefix", "ComfyUI"),
                "json",
                str(inputs.get("text", "{}")).encode(),
            )
            return {"files": [entry]}
        return None


def _failed_at(prompt_id: str, node_id: str, node: dict[str, Any], executed: list[str]) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"], "executed": executed}


def _error_data(
    prompt_id: str, node_id: str, node: dict[str, Any], executed: list[str], exc: SimulatedError
) -> dict[str, Any]:
    """An `execution_error` as ComfyUI sends it."""
    return {
        **_failed_at(prompt_id, node_id, node, executed),
        "exception_message": str(exc),
        "exception_type": exc.exception_type,
        "traceback": ['  File "execution.py", line 1, in execute\n'],
        "current_inputs": {},
        "current_outputs": [],
    }
