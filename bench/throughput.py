"""Token fetch throughput and latency: broker next to the bare aiohttp app, same generator.

Each server runs in its own process, the generator (``bench/loadgen.py``) in another.
The two servers take turns, setting by setting, for several short rounds, and each
figure is the median over rounds: a burst of other work on the machine then moves a
round, not the verdict. Server CPU per request (from /proc schedstat) is reported too,
being far less sensitive to such bursts than requests/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bench.daemon_fixture import TOKEN_PATH, get
from bench.table import combined

HERE = Path(__file__).resolve().parent


class Server(NamedTuple):
    """A server under load: its name in the table, its process (for CPU time) and the socket it serves."""

    name: str
    pid: int
    socket_path: str


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    """Server CPU time per answered request."""
    generator_cpu: float
    """Share of one core the generator used: well under 1 means it was not the bottleneck."""
    requests: int
    failures: int


def cpu_ns(pid: int) -> int:
    """CPU time every thread of ``pid`` has run so far (schedstat's first field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def load(
    socket_path: str,
    connections: int,
    *,
    seconds: float = 0,
    requests: int = 0,
    warmup: float = 0,
    path: str = TOKEN_PATH,
) -> dict[str, float]:
    """Run the generator once in its own process; its JSON figures."""
    argv = [sys.executable, str(HERE / "loadgen.py"), "--socket", socket_path, "--path", path]
    argv += ["--connections", str(connections), "--seconds", str(seconds), "--requests", str(requests)]
    argv += ["--warmup", str(warmup)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def measure(server: Server, connections: int, seconds: float, warmup: float) -> Result:
    before = cpu_ns(server.pid)
    figures = load(server.socket_path, connections, seconds=seconds, warmup=warmup)
    spent = cpu_ns(server.pid) - before
    answered = int(figures["requests"])
    # The server's CPU covers the warm-up too: scale by the share of the run that was measured.
    measured_share = figures["seconds"] / (figures["seconds"] + warmup)
    return Result(
        rps=figures["rps"],
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        cpu_us=spent * measured_share / max(1, answered) / 1000,
        generator_cpu=figures["generator_cpu"],
        requests=answered,
        failures=int(figures["failures"]),
    )


def fetch_body(socket_path: str) -> bytes:
    """The exact body broker answers for the token, so the bare app serves the same bytes."""
    return get(socket_path, TOKEN_PATH)


@contextlib.contextmanager
def bare_server(root: Path, body: bytes) -> Iterator[Server]:
    socket_path = str(root / "bare.sock")
    (root / "bare-body.json").write_bytes(body)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "bare_app.py"), socket_path, str(root / "bare-body.json")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare app did not start")
        yield Server("bare aiohttp", process.pid, socket_path)
    finally:
        process.terminate()
        process.wait(timeout=10)


def compare(
    broker: Server, bare: Server, connections: list[int], seconds: float, warmup: float, rounds: int
) -> dict[tuple[str, int], Result]:
    """Median figures per (server name, connections), the servers taking turns each round."""
    samples: dict[tuple[str, int], list[Result]] = {}
    for _ in range(rounds):
        for count in connections:
            for server in (bare, broker):
                samples.setdefault((server.name, count), []).append(measure(server, count, seconds, warmup))
    return {
        key: combined(results, summed=("requests", "failures"), peak=("generator_cpu",))
        for key, results in samples.items()
    }
