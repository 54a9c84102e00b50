"""A loopback LLM API for the proxy benchmark: a fixed chat completion, or a streamed one.

``POST /v1/chat/completions`` answers the same bytes every time, as an OpenAI-compatible
server would: a JSON completion, or with ``"stream": true`` an SSE stream of ``EVENTS``
chunks and ``data: [DONE]``. The model ``bench-big`` streams ``max_tokens`` chunks of
``BIG_CHUNK`` characters instead, for the memory figure (``max_tokens`` is a field every
proxy passes on; no two chunks in a row alike: LiteLLM stops a stream that repeats one). A request without
``Authorization: Bearer KEY`` gets 401, so a proxy that forgot to put the key in fails
loudly instead of looking fast.

``POST /token`` is the provider's token endpoint for the scale benchmark: it answers every
refresh with a new hour-long token and notes when each arrived (``GET /token/log``).
Prints its port once it listens; SIGTERM stops it.

    python bench/upstream.py KEY
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time

from aiohttp import web

EVENTS = 200
BIG_CHUNK = 16 * 1024
BIG_VARIANTS = 64
CREATED = 1_700_000_000


def completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 10, "total_tokens": 19},
        }
    ).encode()


def event(model: str, content: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def make_app(key: str) -> web.Application:
    expected = f"Bearer {key}"
    answers = {model: completion(model) for model in ("bench", "bench-big")}
    small = [event("bench", f"word{i} ") for i in range(EVENTS - 1)] + [event("bench", "end", "stop")]
    big = [event("bench-big", f"{i:04d}" + "x" * (BIG_CHUNK - 4)) for i in range(BIG_VARIANTS)]

    async def chat(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        body = await request.json()
        model = body.get("model", "bench")
        if not body.get("stream"):
            return web.Response(body=answers.get(model, answers["bench"]), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if model == "bench-big":
            for index in range(int(body.get("max_tokens") or 1)):
                await response.write(big[index % BIG_VARIANTS])
        else:
            for piece in small:
                await response.write(piece)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    refreshes: list[float] = []

    async def token(request: web.Request) -> web.Response:
        refreshes.append(time.time())
        form = await request.post()
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        number = len(refreshes)
        return web.json_response(
            {
                "access_token": f"at-{number}",
                "refresh_token": f"rt-{number}",
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def token_log(request: web.Request) -> web.Response:
        return web.json_response(refreshes)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/token", token)
    app.router.add_get("/token/log", token_log)
    return app


async def serve(key: str) -> None:
    runner = web.AppRunner(make_app(key), access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(sock.getsockname()[1], flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
