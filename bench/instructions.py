"""CPU instructions per token request, broker next to the bare app: a figure load cannot move.

Requests/s on a shared machine swing with whatever else runs; instruction counts do not.
This runs both servers and the generator's client in one process under valgrind's
callgrind, and brackets each server's measured phase with ``os.getppid()`` calls, on
which callgrind dumps its counters (``--dump-before=os_getppid``). Each figure
includes the same client's work, so the difference is broker's own cost. Not part of
``make bench`` (it takes minutes); use it to compare a change before and after:

    .venv/bin/python bench/instructions.py [REQUESTS] [CONNECTIONS]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemon_fixture import TOKEN_PATH, prepare

REQUEST = f"GET {TOKEN_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
WARM = 200


async def child(requests: int, connections: int, root: Path) -> None:
    """Both servers on one loop, then each measured phase between two os.getppid() marks."""
    from aiohttp import web

    from bench.bare_app import make_app
    from bench.loadgen import phase
    from bench.throughput import fetch_body
    from broker.core.config import load_settings
    from broker.daemon.main import Daemon

    env = prepare(root)
    os.environ.update(env)
    daemon = Daemon(load_settings(env))
    await daemon.start()
    broker_socket = env["BROKER_SOCKET"]
    body = await asyncio.to_thread(fetch_body, broker_socket)
    runner = web.AppRunner(make_app(body), access_log=None)
    await runner.setup()
    bare_socket = str(root / "bare.sock")
    await web.UnixSite(runner, bare_socket).start()
    for path in (bare_socket, broker_socket):
        streams = [await asyncio.open_unix_connection(path) for _ in range(connections)]
        await phase(streams, REQUEST, seconds=None, requests=WARM, record=False)
        os.getppid()
        tally, _ = await phase(streams, REQUEST, seconds=None, requests=requests, record=False)
        os.getppid()
        if tally.failures:
            raise RuntimeError(f"{tally.failures} requests to {path} failed")
        for _, writer in streams:
            writer.close()
    os._exit(0)  # the counters are dumped; a clean shutdown would only cost minutes under valgrind


def summary(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return
    with tempfile.TemporaryDirectory(prefix="bkc-", dir="/tmp") as out:
        (Path(out) / "state").mkdir()
        argv = ["valgrind", "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={out}/cg.%p"]
        argv += [sys.executable, __file__, "--child", str(requests), str(connections), str(Path(out) / "state")]
        subprocess.run(argv, check=True, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
        dumps = {int(p.suffix[1:]): p for p in Path(out).glob("cg.*.*")}
        bare, broker = summary(dumps[2]) / requests, summary(dumps[4]) / requests
    print(f"{requests} requests over {connections} connections, instructions per request (client included):")
    print(f"  bare aiohttp {bare / 1000:8.1f} k")
    print(f"  broker       {broker / 1000:8.1f} k  (+{(broker - bare) / 1000:.1f} k)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
    else:
        main()
