"""An OpenAI API stand-in: chat completions (plain and SSE streaming), responses, images, models.

    python -m appliance.standins.openai --port 8301 [--api-key-file FILE] [--slow-seconds 30]

Misbehaviour is chosen per request by the model name, so one server serves every test:
`standin-429` -> 429 rate_limit_exceeded with `retry-after: 7`, `standin-500` -> 500 server_error,
`standin-400` -> 400 invalid_request_error, `standin-slow` -> answers after --slow-seconds,
`standin-malformed` -> 200 with a body that is not JSON, `standin-truncated` -> a stream cut off mid-way.
A wrong/missing bearer key (when --api-key-file is set) -> 401 invalid_api_key. Error bodies use OpenAI's
`{"error": {"message", "type", "param", "code"}}` shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

from aiohttp import web

from appliance.standins import process
from appliance.standins.media import Frame, encode_png

#: The parsed JSON body, stored by the middleware for the handlers.
BODY_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("body", dict)


def _error(
    status: int, message: str, etype: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": etype, "param": None, "code": code}},
        status=status,
        headers=headers,
    )


class OpenAI:
    """The routes; misbehaviour is chosen by the middleware, before a handler sees the request."""

    def __init__(self, api_key: str | None, slow_seconds: float) -> None:
        self.api_key = api_key
        self.slow_seconds = slow_seconds
        self.stats: dict[str, int] = {"requests": 0}

    @web.middleware
    async def behaviour(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        self.stats["requests"] += 1
        if not process.authorized(request, self.api_key):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return _error(
                    400, "We could not parse the JSON body of your request.", "invalid_request_error", None
                )
        request[BODY_KEY] = body
        model = str(body.get("model", ""))
        if model == "standin-429":
            return _error(
                429,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
                {"retry-after": "7", "x-ratelimit-remaining-requests": "0"},
            )
        if model == "standin-500":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        if model == "standin-400":
            return _error(400, "Invalid value for 'model'.", "invalid_request_error", "model_not_found")
        if model == "standin-malformed":
            return web.Response(text='{"id": "chatcmpl-1", "choices": [', content_type="application/json")
        if model == "standin-slow":
            await asyncio.sleep(self.slow_seconds)
        return await handler(request)

    async def models(self, request: web.Request) -> web.Response:
        names = ["gpt-4o-mini", "gpt-image-1", "standin-429", "standin-500", "standin-slow"]
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "standin"} for n in names],
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY_KEY]
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' is a required property", "invalid_request_error", None)
        text = "echo: " + str(messages[-1].get("content", ""))
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time()), body.get("model")
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": len(text.split()),
            "total_tokens": 5 + len(text.split()),
        }
        if not body.get("stream"):
            return _completion(cid, created, model, text, usage)
        return await _stream(request, body, cid, created, model, text)

    async def responses(self, request: web.Request) -> web.Response:
        body = request[BODY_KEY]
        prompt = body.get("input")
        text = "echo: " + (prompt if isinstance(prompt, str) else json.dumps(prompt))
        rid = f"resp_{uuid.uuid4().hex[:12]}"
        return web.json_response(
            {
                "id": rid,
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": body.get("model"),
                "error": None,
                "incomplete_details": None,
                "instructions": None,
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_{rid}",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "temperature": 1.0,
                "top_p": 1.0,
                "usage": {
                    "input_tokens": 5,
                    "output_tokens": 3,
                    "total_tokens": 8,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                },
            }
        )

    async def images(self, request: web.Request) -> web.Response:
        body = request[BODY_KEY]
        if not body.get("prompt"):
            return _error(400, "'prompt' is a required property", "invalid_request_error", None)
        size = str(body.get("size") or "16x16")
        width, _, height = size.partition("x")
        frame = Frame.solid(min(int(width or 16), 64), min(int(height or 16), 64), 0x3366CC)
        n = int(body.get("n") or 1)
        data = [
            {"b64_json": base64.b64encode(encode_png(frame)).decode(), "revised_prompt": body["prompt"]}
            for _ in range(n)
        ]
        return web.json_response({"created": int(time.time()), "data": data})


def _completion(cid: str, created: int, model: Any, text: str, usage: dict[str, int]) -> web.Response:
    return web.json_response(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": usage,
        }
    )


async def _stream(
    request: web.Request, body: dict[str, Any], cid: str, created: int, model: Any, text: str
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    words = text.split(" ")
    for i, word in enumerate(words):
        if body.get("model") == "standin-truncated" and i == len(words) // 2:
            return resp  # connection ends without [DONE]
        delta: dict[str, Any] = {"content": word if i == 0 else " " + word}
        if i == 0:
            delta["role"] = "assistant"
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    final = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    await resp.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
    return resp


def make_app(api_key: str | None = None, slow_seconds: float = 30.0) -> web.Application:
    o = OpenAI(api_key, slow_seconds)
    app = web.Application(middlewares=[o.behaviour])
    app.add_routes(
        [
            web.get("/v1/models", o.models),
            web.post("/v1/chat/completions", o.chat),
            web.post("/v1/responses", o.responses),
            web.post("/v1/images/generations", o.images),
            process.stats_route(lambda: o.stats),
        ]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = process.parser("openai", __doc__, 8301)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    process.run(make_app(process.read_key(args.api_key_file), args.slow_seconds), args)


if __name__ == "__main__":
    main()
