"""A ComfyUI stand-in speaking the real HTTP/WS protocol, with switchable misbehaviour.

    python -m appliance.standins.comfyui --port 8188 [--data-dir DIR] [--step-delay 0.05]
        [--fail-mode none|execution_error|oom|hang|drop_ws|crash] [--fail-times N] [--checkpoints a,b] [--vram-gb 24]

Routes as ComfyUI (also under /api): /system_stats /object_info /prompt /queue /history /history/{id} /view
/upload/image /interrupt /free /ws; /view answers with the type guessed from the file name, as ComfyUI does (a
.json output, e.g. from the custom-node-style StandinSaveJSON, comes back as application/json). Control: GET /__standin/stats, POST /__standin/config {field: value},
POST /__standin/restart (loses queue and history like a real restart), POST /__standin/pause {"paused": bool}.
Fail modes hit the first StandinSampler (else the first output node) of a prompt: `execution_error` and `oom`
fail it like ComfyUI does, `hang` never returns and ignores interrupts, `drop_ws` closes every socket after the
first step, `crash` exits the process (in the CLI) mid-node.
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from appliance.standins import comfyui_nodes as nodes
from appliance.standins.comfyui_exec import Executor
from appliance.standins.process import serve


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


def _dir_for(app_state: ComfyStandin, kind: str | None) -> Path | None:
    return app_state.dirs.get(kind or "output")


def make_app(state: ComfyStandin) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        vram = int(state.behaviour.vram_gb * 1024**3)
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": 16 * 1024**3,
                    "ram_free": 8 * 1024**3,
                    "comfyui_version": "0.0.0-standin",
                    "python_version": sys.version,
                    "pytorch_version": "standin",
                    "embedded_python": False,
                    "argv": ["main.py"],
                },
                "devices": [
                    {
                        "name": "cuda:0 Standin GPU",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": vram,
                        "vram_free": vram // 2,
                        "torch_vram_total": vram,
                        "torch_vram_free": vram // 2,
                    }
                ],
            }
        )

    @routes.get("/object_info")
    async def object_info(request: web.Request) -> web.Response:
        return web.json_response(nodes.object_info(state.defs()))

    @routes.get("/object_info/{node_class}")
    async def object_info_node(request: web.Request) -> web.Response:
        info = nodes.object_info(state.defs())
        name = request.match_info["node_class"]
        return web.json_response({name: info[name]} if name in info else {})

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(state.queue_info())

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        state.stats["prompt_posts"] += 1
        body = await request.json()
        if "prompt" not in body:
            return web.json_response(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "No prompt provided",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status=400,
            )
        number = body.get("number", state.number)
        state.number += 1
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        valid, error, outputs, node_errors = nodes.validate_prompt(body["prompt"], state.defs())
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        state.pending.append([number, prompt_id, body["prompt"], extra, outputs])
        state.stats["prompts_accepted"] += 1
        state.wakeup.set()
        await state.send_status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [state.running] if state.running else [],
                "queue_pending": sorted(state.pending, key=lambda i: i[0]),
            }
        )

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            state.pending.clear()
        for pid in body.get("delete", []):
            before = len(state.pending)
            state.pending[:] = [i for i in state.pending if i[1] != pid]
            state.stats["queue_deletes"] += before - len(state.pending)
        return web.Response()

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        items = list(state.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    @routes.get("/history/{prompt_id}")
    async def get_history_one(request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: state.history[pid]} if pid in state.history else {})

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            state.history.clear()
        for pid in body.get("delete", []):
            state.history.pop(pid, None)
        return web.Response()

    @routes.post("/interrupt")
    async def interrupt(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        if not pid or (state.running and state.running[1] == pid):
            state.stats["interrupts"] += 1
            state.executor.interrupt()
        return web.Response()

    @routes.post("/free")
    async def free(request: web.Request) -> web.Response:
        return web.Response()

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        base = _dir_for(state, request.query.get("type"))
        if not filename or base is None or filename.startswith("/") or ".." in filename or ".." in subfolder:
            return web.Response(status=400)
        path = base / subfolder / filename
        if not path.is_file():
            return web.Response(status=404)
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return web.Response(
            body=path.read_bytes(),
            content_type=ctype,
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    @routes.post("/upload/image")
    async def upload(request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder") or "")
        base = _dir_for(state, kind)
        if base is None or ".." in subfolder or "/" in image.filename or ".." in image.filename:
            return web.Response(status=400)
        folder = base / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        name = image.filename
        stem, ext = os.path.splitext(name)
        i = 1
        while str(post.get("overwrite")) not in ("true", "1") and (folder / name).exists():
            if (folder / name).read_bytes() == data:
                break
            name = f"{stem} ({i}){ext}"
            i += 1
        (folder / name).write_bytes(data)
        state.stats["uploads"] += 1
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        state.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": state.queue_info(), "sid": sid}})
            if state.client_id == sid and state.executor.current_node is not None:
                await ws.send_json({"type": "executing", "data": {"node": state.executor.current_node}})
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if state.sockets.get(sid) is ws:
                del state.sockets[sid]
        return ws

    @routes.get("/__standin/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**state.stats, "behaviour": asdict(state.behaviour)})

    @routes.post("/__standin/config")
    async def config(request: web.Request) -> web.Response:
        body = await request.json()
        for key, value in body.items():
            if not hasattr(state.behaviour, key) or key == "allow_exit":
                return web.json_response({"error": f"unknown setting {key!r}"}, status=400)
            if key == "fail_mode" and value not in FAIL_MODES:
                return web.json_response({"error": f"fail_mode must be one of {FAIL_MODES}"}, status=400)
            setattr(state.behaviour, key, value)
        return web.json_response(asdict(state.behaviour))

    @routes.post("/__standin/restart")
    async def restart(request: web.Request) -> web.Response:
        await state.restart()
        return web.Response()

    @routes.post("/__standin/pause")
    async def pause(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("paused", True):
            state.unpaused.clear()
        else:
            state.unpaused.set()
        return web.Response()

    app = web.Application(client_max_size=64 * 1024**2)
    app.add_routes(routes)
    # ComfyUI serves every route under /api too (the web frontend uses that prefix).
    api = web.Application(client_max_size=64 * 1024**2)
    api.add_routes(routes)
    app.add_subapp("/api", api)

    async def lifecycle(app: web.Application) -> Any:
        state.start()
        yield
        await state.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.standins.comfyui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # ComfyUI's own flags, so `appliance comfyui` can start the stand-in exactly as it starts ComfyUI.
    parser.add_argument("--host", "--listen", dest="host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument(
        "--cpu", action="store_true", help="accepted for compatibility (there is no GPU here)"
    )
    parser.add_argument("--cuda-device", type=int, help="accepted for compatibility")
    parser.add_argument("--base-directory", type=Path, dest="data_dir", help="same as --data-dir")
    # ComfyUI's directory flags, with its semantics: the temp directory is `<--temp-directory>/temp`.
    parser.add_argument("--output-directory", type=Path, help="where outputs are written")
    parser.add_argument("--input-directory", type=Path, help="where uploads are written")
    parser.add_argument("--temp-directory", type=Path, help="temp files go to its `temp` subdirectory")
    parser.add_argument("--user-directory", type=Path, help="accepted; created like ComfyUI does")
    parser.add_argument("--database-url", help="accepted for compatibility")
    parser.add_argument("--disable-auto-launch", action="store_true", help="accepted for compatibility")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="output/temp/input live here (default: a temp dir)"
    )
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds per StandinSampler step")
    parser.add_argument("--fail-mode", choices=FAIL_MODES, default="none")
    parser.add_argument("--fail-times", type=int, default=None)
    parser.add_argument("--checkpoints", default=",".join(nodes.DEFAULT_CHECKPOINTS))
    parser.add_argument("--vram-gb", type=float, default=24.0)
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        step_delay_s=args.step_delay,
        fail_mode=args.fail_mode,
        fail_times=args.fail_times,
        checkpoints=[c for c in args.checkpoints.split(",") if c],
        vram_gb=args.vram_gb,
        allow_exit=True,
    )
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="comfyui-standin-"))
    dirs = {
        kind: path
        for kind, path in [
            ("output", args.output_directory),
            ("input", args.input_directory),
            ("temp", args.temp_directory / "temp" if args.temp_directory else None),
        ]
        if path is not None
    }
    if args.user_directory is not None:
        args.user_directory.mkdir(parents=True, exist_ok=True)
    state = ComfyStandin(data_dir, behaviour, dirs)
    asyncio.run(serve(make_app(state), args.host, args.port))


if __name__ == "__main__":
    main()
