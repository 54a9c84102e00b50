"""Scale: the daemon holding 1, 100 and 1,000 credentials, a quarter of them due together.

Half the credentials are API keys, half OAuth logins whose token endpoint is the
loopback upstream (``bench/upstream.py``, which notes when each refresh arrives). A
quarter of all of them were issued together an hour ago, so their timers all come due
within the same minute (``DUE_AFTER`` seconds after the store is written, give or take
the refresher's jitter). For each size: daemon start to READY=1, ``broker status`` as a
whole process, token fetch p50 over the socket, RSS once ready, and how the due
refreshes reached the upstream (the busiest second, the span they took).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.daemon_fixture import bench_env, ready_daemon
from bench.memory import rss_kib
from bench.table import Row, progress, verdict
from bench.throughput import load
from broker.core.model import Credential
from broker.store.file_store import FileStore
from broker.store.keys import FileKey

SIZES = [1, 100, 1000]
LIFETIME = 3600.0
DUE_AFTER = 45.0
"""Seconds after setup at which the due logins' timers come due (before the jitter)."""
LEAD = 360.0
"""The refresher's lead for an hour-long token: 10 % of its lifetime."""
SETTLE_TIMEOUT = 150.0
STATUS_RUNS = 5

CONFIG = """
[providers.keys]
type = "apikey"
base_url = "https://llm.keys.example/v1"
api = "openai-chat"
auth_header = "bearer"

[providers.logins]
type = "oauth"
flow = "device"
token_endpoint = "http://127.0.0.1:{port}/token"
device_authorization_endpoint = "http://127.0.0.1:{port}/device"
client_id = "scale"
base_url = "https://llm.logins.example/v1"
"""


@dataclass(frozen=True)
class Scale:
    credentials: int
    due: int
    start_ms: float
    status_ms: float
    token_p50_ms: float
    rss_kib: int
    refreshes: list[float]
    """Arrival times of the refreshes at the upstream."""

    def busiest_second(self) -> int:
        times = sorted(self.refreshes)
        best, low = 0, 0
        for high, at in enumerate(times):
            while at - times[low] >= 1.0:
                low += 1
            best = max(best, high - low + 1)
        return best

    def span(self) -> float:
        return max(self.refreshes) - min(self.refreshes) if self.refreshes else 0.0


def credentials(count: int, now: float) -> tuple[list[Credential], int]:
    """``count`` credentials, keys and logins half and half (one alone is a key), and how many are due together."""
    logins = math.ceil(count / 2) if count > 1 else 0
    due = count // 4
    made = [
        Credential(provider="keys", account=f"key-{i}", access_token=f"sk-scale-{i:06d}" + "k" * 32)
        for i in range(count - logins)
    ]
    for i in range(logins):
        expires = now + DUE_AFTER + LEAD if i < due else now + LIFETIME - 60 + i % 600
        made.append(
            Credential(
                provider="logins",
                account=f"login-{i}",
                access_token=f"at-scale-{i:06d}",
                refresh_token=f"rt-scale-{i:06d}",
                expires_at=expires,
                issued_at=expires - LIFETIME,
            )
        )
    return made, due


def write_store(state: Path, made: list[Credential]) -> None:
    """All credentials in one write (one ``put`` each would rewrite the file a thousand times)."""
    state.mkdir(mode=0o700)
    store = FileStore(state, FileKey(state / "key"))
    store.put(made[0])
    contents = store._read()
    contents.credentials.update((credential.key, credential) for credential in made)
    store._write(contents)


def refresh_log(port: int) -> list[float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/token/log", timeout=10) as answer:
        times: list[float] = json.load(answer)
    return times


def status_ms(env: dict[str, str], root: Path) -> float:
    script = str(Path(sys.executable).with_name("broker"))
    samples = []
    for _ in range(STATUS_RUNS):
        start = time.perf_counter()
        subprocess.run([script, "status"], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def measure(root: Path, count: int, upstream_port: int) -> Scale:
    env = bench_env(root)
    for name in ("home", "run", "config", "xstate", "data"):
        (root / name).mkdir(mode=0o700)
    (root / "config.toml").write_text(CONFIG.format(port=upstream_port))
    setup = time.time()
    made, due = credentials(count, setup)
    write_store(root / "state", made)
    before = len(refresh_log(upstream_port))
    start = time.perf_counter()
    with ready_daemon(root, env) as daemon:
        start_ms = (time.perf_counter() - start) * 1000
        rss = rss_kib(daemon.pid)
        status = status_ms(daemon.env, root)
        path = f"/v1/token/{made[0].provider}?account={made[0].account}"
        token = load(daemon.socket_path, 1, seconds=2.0, warmup=0.5, path=path)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while len(refresh_log(upstream_port)) - before < due and time.monotonic() < deadline:
            time.sleep(1.0)
        refreshes = refresh_log(upstream_port)[before:]
    return Scale(count, due, start_ms, status, token["p50_ms"], rss, refreshes)


TOKEN_FLAT = 2.0
"""Token fetch p50 with the most credentials, at most this many times the p50 with one: a fetch
that grew with the credentials would be hundreds of times slower, while a p50 of 0.15 ms moves by
half of itself with other load on a shared machine."""
BURST = 0.2
BURST_FLOOR = 5
"""Spread, not a burst: the busiest second holds at most a fifth of the due refreshes (or 5)."""


def rows(root: Path) -> list[Row]:
    from bench.proxy import upstream

    progress(f"scale: {', '.join(map(str, SIZES))} credentials, a quarter due {DUE_AFTER:.0f} s after each start")
    results = []
    with upstream() as port:
        for count in SIZES:
            (root / f"scale-{count}").mkdir()
            results.append(measure(root / f"scale-{count}", count, port))
    rows: list[Row] = []
    for result in results:
        spread = (
            f"{len(result.refreshes)} of {result.due}, busiest second {result.busiest_second()}, "
            f"over {result.span():.0f} s"
            if result.due
            else "none due"
        )
        rows.append(
            (
                f"scale {result.credentials:,} credentials: start / status ms, token p50 ms, RSS",
                f"{result.start_ms:.0f} / {result.status_ms:.0f}, {result.token_p50_ms:.2f}, "
                f"{result.rss_kib / 1024:.1f} MiB",
                "",
                "",
            )
        )
        if result.due:
            ok = len(result.refreshes) >= result.due and result.busiest_second() <= max(BURST_FLOOR, result.due * BURST)
            rows.append(("  refreshes at the upstream", spread, f"busiest s <= {BURST:.0%} of them", verdict(ok)))
    one, *_, most = results
    middle = results[len(results) // 2]
    flat = most.token_p50_ms <= TOKEN_FLAT * one.token_p50_ms
    rows.append(
        (
            f"  token p50 with {most.credentials:,} / with {one.credentials}",
            f"{most.token_p50_ms / one.token_p50_ms:.2f}x",
            f"<= {TOKEN_FLAT}x (flat)",
            verdict(flat),
        )
    )
    factor = most.credentials / middle.credentials
    for label, big, mid in (
        ("start", most.start_ms, middle.start_ms),
        ("status", most.status_ms, middle.status_ms),
    ):
        rows.append(
            (
                f"  {label} with {most.credentials:,} / with {middle.credentials}",
                f"{big / mid:.2f}x",
                f"<= {factor:.0f}x (linear)",
                verdict(big / mid <= factor),
            )
        )
    return rows
