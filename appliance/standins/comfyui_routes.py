"""The ComfyUI stand-in's HTTP and WS routes, as ComfyUI serves them (also under /api)."""

from __future__ import annotations

import mimetypes
import os
import sys
import uuid
from dataclasses import asdict
from typing import Any

from aiohttp import WSMsgType, web

from appliance.standins import comfyui_nodes as nodes
from appliance.standins import process
from appliance.standins.comfyui_state import FAIL_MODES, ComfyStandin, dir_for


class Routes:
    """One handler per route, over one stand-in's state."""

    def __init__(self, state: ComfyStandin) -> None:
        self.state = state

    async def system_stats(self, request: web.Request) -> web.Response:
        vram = int(self.state.behaviour.vram_gb * 1024**3)
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

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(nodes.object_info(self.state.defs()))

    async def object_info_node(self, request: web.Request) -> web.Response:
        info = nodes.object_info(self.state.defs())
        name = request.match_info["node_class"]
        return web.json_response({name: info[name]} if name in info else {})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        self.state.stats["prompt_posts"] += 1
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
        number = body.get("number", self.state.number)
        self.state.number += 1
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        valid, error, outputs, node_errors = nodes.validate_prompt(body["prompt"], self.state.defs())
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        self.state.pending.append([number, prompt_id, body["prompt"], extra, outputs])
        self.state.stats["prompts_accepted"] += 1
        self.state.wakeup.set()
        await self.state.send_status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [self.state.running] if self.state.running else [],
                "queue_pending": sorted(self.state.pending, key=lambda i: i[0]),
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.state.pending.clear()
        for pid in body.get("delete", []):
            before = len(self.state.pending)
            self.state.pending[:] = [i for i in self.state.pending if i[1] != pid]
            self.state.stats["queue_deletes"] += before - len(self.state.pending)
        return web.Response()

    async def get_history(self, request: web.Request) -> web.Response:
        items = list(self.state.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    async def get_history_one(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.state.history[pid]} if pid in self.state.history else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.state.history.clear()
        for pid in body.get("delete", []):
            self.state.history.pop(pid, None)
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        if not pid or (self.state.running and self.state.running[1] == pid):
            self.state.stats["interrupts"] += 1
            self.state.executor.interrupt()
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        return web.Response()

    async def view(self, request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        base = dir_for(self.state, request.query.get("type"))
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

    async def upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder") or "")
        base = dir_for(self.state, kind)
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
        self.state.stats["uploads"] += 1
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.state.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": self.state.queue_info(), "sid": sid}})
            if self.state.client_id == sid and self.state.executor.current_node is not None:
                await ws.send_json({"type": "executing", "data": {"node": self.state.executor.current_node}})
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.state.sockets.get(sid) is ws:
                del self.state.sockets[sid]
        return ws

    def counters(self) -> dict[str, Any]:
        return {**self.state.stats, "behaviour": asdict(self.state.behaviour)}

    async def config(self, request: web.Request) -> web.Response:
        body = await request.json()
        for key, value in body.items():
            if not hasattr(self.state.behaviour, key) or key == "allow_exit":
                return web.json_response({"error": f"unknown setting {key!r}"}, status=400)
            if key == "fail_mode" and value not in FAIL_MODES:
                return web.json_response({"error": f"fail_mode must be one of {FAIL_MODES}"}, status=400)
            setattr(self.state.behaviour, key, value)
        return web.json_response(asdict(self.state.behaviour))

    async def restart(self, request: web.Request) -> web.Response:
        await self.state.restart()
        return web.Response()

    async def pause(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("paused", True):
            self.state.unpaused.clear()
        else:
            self.state.unpaused.set()
        return web.Response()


def make_app(state: ComfyStandin) -> web.Application:
    r = Routes(state)
    routes = [
        web.get("/system_stats", r.system_stats),
        web.get("/object_info", r.object_info),
        web.get("/object_info/{node_class}", r.object_info_node),
        web.get("/prompt", r.get_prompt),
        web.post("/prompt", r.post_prompt),
        web.get("/queue", r.get_queue),
        web.post("/queue", r.post_queue),
        web.get("/history", r.get_history),
        web.get("/history/{prompt_id}", r.get_history_one),
        web.post("/history", r.post_history),
        web.post("/interrupt", r.interrupt),
        web.post("/free", r.free),
        web.get("/view", r.view),
        web.post("/upload/image", r.upload),
        web.get("/ws", r.websocket),
        process.stats_route(r.counters),
        web.post("/__standin/config", r.config),
        web.post("/__standin/restart", r.restart),
        web.post("/__standin/pause", r.pause),
    ]
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
