"""The daemon's resident memory: idle with every provider configured, then after a load.

Every built-in is always configured; the config adds a custom OAuth and an API-key
provider, so each kind of provider is built. RSS is VmRSS from /proc/PID/status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.daemon_fixture import EVERY_KIND, running_daemon_with_token
from bench.throughput import load

WARM_REQUESTS = 1000
"""Requests after which the first-request allocations (lazy imports, caches) are done."""


@dataclass(frozen=True)
class Memory:
    idle_kib: int
    warm_kib: int
    """After the first WARM_REQUESTS requests."""
    loaded_kib: int
    """After all the requests."""
    requests: int
    failures: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure(root: Path, requests: int, connections: int = 8) -> Memory:
    """Start a daemon, read its RSS idle, after a warm-up, then after ``requests`` in all."""
    with running_daemon_with_token(root, EVERY_KIND) as daemon:
        idle = rss_kib(daemon.pid)
        first = load(daemon.socket_path, connections, requests=min(WARM_REQUESTS, requests))
        warm = rss_kib(daemon.pid)
        rest = load(daemon.socket_path, connections, requests=max(0, requests - WARM_REQUESTS))
        loaded = rss_kib(daemon.pid)
    answered = int(first["requests"] + rest["requests"])
    return Memory(idle, warm, loaded, answered, int(first["failures"] + rest["failures"]))
