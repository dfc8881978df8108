"""The state of the ComfyUI stand-in: behaviour switches, queue, history, sockets, the executor loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.standins import comfyui_nodes as nodes
from appliance.standins.comfyui_exec import Executor


@dataclass
class Behaviour:
    step_delay_s: float = 0.0
    fail_mode: str = "none"
    #: How many prompts the fail mode hits before behaving again (None = all).
    fail_times: int | None = None
    checkpoints: list[str] = field(default_factory=lambda: list(nodes.DEFAULT_CHECKPOINTS))
    loras: list[str] = field(default_factory=lambda: list(nodes.DEFAULT_LORAS))
    vaes: list[str] = field(default_factory=lambda: list(nodes.DEFAULT_VAES))
    vram_gb: float = 24.0
    #: The process may exit for fail_mode=crash (only the CLI sets this).
    allow_exit: bool = False


FAIL_MODES = ("none", "execution_error", "oom", "hang", "drop_ws", "crash")


class ComfyStandin:
    """State of one fake ComfyUI: queue, history, sockets, directories, counters."""

    def __init__(
        self, data_dir: Path, behaviour: Behaviour | None = None, dirs: dict[str, Path] | None = None
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        self.dirs = {t: data_dir / t for t in ("output", "temp", "input")} | (dirs or {})
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.stats = {
            "prompt_posts": 0,
            "prompts_accepted": 0,
            "executions": 0,
            "interrupts": 0,
            "uploads": 0,
            "queue_deletes": 0,
            "restarts": 0,
        }
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._reset_state()
        self._worker: asyncio.Task[None] | None = None

    def _reset_state(self) -> None:
        self.pending: list[list[Any]] = []
        self.running: list[Any] | None = None
        self.history: dict[str, Any] = {}
        self.number = 0
        self.client_id: str | None = None
        self.wakeup = asyncio.Event()
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.executor = Executor(self)

    def defs(self) -> dict[str, nodes.NodeDef]:
        b = self.behaviour
        inputs = sorted(p.name for p in self.dirs["input"].iterdir() if p.is_file())
        return nodes.node_library(b.checkpoints, b.loras, b.vaes, inputs)

    # ---- messaging --------------------------------------------------------------------------------------
    async def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """To one client, or everyone when sid is None (as PromptServer.send_json)."""
        targets = (
            list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        )
        for ws in targets:
            try:
                await ws.send_json({"type": event, "data": data})
            except (ConnectionError, RuntimeError):
                pass

    async def send_status(self) -> None:
        await self.send("status", {"status": self.queue_info()}, None)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    async def drop_sockets(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        self.sockets.clear()

    # ---- executor loop ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.drop_sockets()

    async def restart(self) -> None:
        """What a ComfyUI restart looks like to clients: sockets drop, queue and history are gone."""
        await self.stop()
        self._reset_state()
        self.stats["restarts"] += 1
        self.start()

    async def _run(self) -> None:
        while True:
            await self.unpaused.wait()
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            self.pending.sort(key=lambda item: item[0])
            item = self.pending.pop(0)
            self.running = item
            await self.send_status()
            number, prompt_id, prompt, extra_data, outputs = item
            self.client_id = extra_data.get("client_id")
            self.stats["executions"] += 1
            result = await self.executor.execute(prompt_id, prompt, outputs)
            self.history[prompt_id] = {
                "prompt": item,
                "outputs": result.outputs,
                "status": {
                    "status_str": "success" if result.success else "error",
                    "completed": result.success,
                    "messages": result.messages,
                },
                "meta": result.meta,
            }
            self.running = None
            if self.client_id is not None:
                await self.send("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
            await self.send_status()

    def next_failure(self) -> str:
        """The fail mode for the prompt starting now (consumes one of fail_times)."""
        b = self.behaviour
        if b.fail_mode == "none" or b.fail_times == 0:
            return "none"
        if b.fail_times is not None:
            b.fail_times -= 1
        return b.fail_mode


def dir_for(app_state: ComfyStandin, kind: str | None) -> Path | None:
    return app_state.dirs.get(kind or "output")
