"""The baseline: a bare aiohttp app on a Unix socket serving fixed JSON bytes.

No middlewares, no lookups: what aiohttp itself costs per request, so the broker's
figures can be read as "aiohttp plus broker's own work". Prints ``ready`` once it
listens; SIGTERM stops it.

    python bench/bare_app.py SOCKET_PATH BODY_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web


def make_app(body: bytes) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    app = web.Application()
    app.router.add_get("/v1/token/{provider}", token)
    return app


async def serve(socket_path: str, body: bytes) -> None:
    runner = web.AppRunner(make_app(body), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]).read_bytes()))
