"""Socket activation: from a client's connect() to the first answered request.

``systemd-socket-activate -l PATH python -m broker serve`` listens on PATH and starts the
daemon on the first connection, handing it the socket as systemd would (LISTEN_FDS).
The clock runs from the client's connect() to the last byte of its ``GET /v1/health``
answer, so it holds the whole daemon start: interpreter, imports, store, first request.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import floor
from bench.daemon_fixture import EVERY_KIND, prepare

TOOL = "systemd-socket-activate"


def available() -> bool:
    return shutil.which(TOOL) is not None


def first_answer(socket_path: str) -> float:
    """Seconds from connect() to the whole health answer (head, then Content-Length bytes)."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += _recv(sock)
        head, _, body = raw.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += _recv(sock)
    elapsed = time.perf_counter() - start
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"health answered {head.splitlines()[0]!r}")
    return elapsed


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise RuntimeError("the daemon closed the connection before answering")
    return chunk


def once(root: Path) -> float:
    """One activation of a fresh daemon; stops it afterwards."""
    env = prepare(root, EVERY_KIND)
    socket_path = str(root / "run" / "activate.sock")
    passed = [arg for name in sorted(env) for arg in ("-E", name)]
    command = [sys.executable, "-m", "broker", "serve", "--log-level", "warning"]
    process = subprocess.Popen(
        [TOOL, "-l", socket_path, *passed, *command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=root,  # not the checkout: ``python -m`` would import broker from there
    )
    try:
        assert process.stderr is not None
        listening = process.stderr.readline()  # "Listening on PATH as 3." once the socket is bound
        if b"Listening on" not in listening:
            raise RuntimeError(f"{TOOL} did not listen: {listening!r}")
        return first_answer(socket_path)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def measure(root: Path, runs: int) -> tuple[list[float], list[float]]:
    """Seconds of ``runs`` activations, each in its own fresh state directory, and of as many
    floor processes (``bench.floor``), taking turns so both meet the same machine."""
    samples, floors = [], []
    for index in range(runs):
        run_root = root / f"activation-{index}"
        run_root.mkdir()
        samples.append(once(run_root))
        floors.append(floor.import_seconds())
    return samples, floors


def median_ms(samples: list[float]) -> float:
    return float(statistics.median(samples)) * 1000
