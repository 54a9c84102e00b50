"""``make bench``: every figure of the benchmark in one run, as one table against its targets.

A benchmark reports; it does not fail: the exit status is 0 whether targets pass or miss.
``make bench`` runs it with broker installed as users install it (a regular, non-editable
install in ``.bench-venv``) and LiteLLM's proxy server in ``.bench-litellm``.
Knobs (environment): BENCH_SECONDS (measured seconds per throughput round, default 2),
BENCH_WARMUP (unrecorded seconds before each, 0.5), BENCH_ROUNDS (3), BENCH_RUNS
(``broker token`` runs, 60), BENCH_MEMORY_REQUESTS (100000), BENCH_ACTIVATIONS (10),
BENCH_STREAM_MIB (streamed through broker's proxy, 1024), BENCH_LITELLM_STREAM_MIB
(through LiteLLM's, 16), BENCH_LITELLM (LiteLLM's virtualenv, .bench-litellm), BENCH_ONLY
(some of: throughput,token,memory,activation,proxy,scale).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after site-packages: the installed broker wins

import aiohttp

from bench import activation, floor, memory, proxy, scale, throughput, token_startup
from bench.daemon_fixture import running_daemon_with_token
from bench.table import Row, print_table, progress, verdict

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "0.5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "60"))
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "100000"))
ACTIVATIONS = int(os.environ.get("BENCH_ACTIVATIONS", "10"))
STREAM_MIB = int(os.environ.get("BENCH_STREAM_MIB", "1024"))
LITELLM_STREAM_MIB = int(os.environ.get("BENCH_LITELLM_STREAM_MIB", "16"))
ONLY = os.environ.get("BENCH_ONLY", "throughput,token,memory,activation,proxy,scale").split(",")
CONNECTIONS = [1, 32]

THROUGHPUT_SHARE = 0.8
P99_MS = 3.0
STARTUP_RATIO = 1.15
ACTIVATION_RATIO = 1.3
IDLE_ABOVE_FLOOR_MIB = 8.0
GROWTH_MIB = 5.0


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} cores ({cpu}); load average at start {load[0]:.2f}; "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}\n"
        "server and load generator are separate processes sharing those cores; "
        "a load average well above 0 means other work shared them too"
    )


def throughput_rows(root: Path) -> list[Row]:
    progress(f"throughput: {ROUNDS} rounds x {CONNECTIONS} connections x 2 servers x {WARMUP}+{SECONDS} s")
    (root / "throughput").mkdir()
    with running_daemon_with_token(root / "throughput") as daemon:
        broker = throughput.Server("broker", daemon.pid, daemon.socket_path)
        body = throughput.fetch_body(daemon.socket_path)
        with throughput.bare_server(root, body) as bare:
            results = throughput.compare(broker, bare, CONNECTIONS, SECONDS, WARMUP, ROUNDS)
    rows: list[Row] = []
    for count in CONNECTIONS:
        ours, base = results[("broker", count)], results[("bare aiohttp", count)]
        share = ours.rps / base.rps
        rows.append(
            (
                f"token fetch, {count} conn: broker / bare req/s",
                f"{ours.rps:,.0f} / {base.rps:,.0f} = {share:.2f}",
                f">= {THROUGHPUT_SHARE}",
                verdict(share >= THROUGHPUT_SHARE),
            )
        )
        rows.append((f"  p50 ms broker / bare ({count} conn)", f"{ours.p50_ms:.2f} / {base.p50_ms:.2f}", "", ""))
        p99_target, p99_verdict = ("", "")
        if count == 32:
            p99_target, p99_verdict = f"broker < {P99_MS}", verdict(ours.p99_ms < P99_MS)
        rows.append(
            (
                f"  p99 ms broker / bare ({count} conn)",
                f"{ours.p99_ms:.2f} / {base.p99_ms:.2f}",
                p99_target,
                p99_verdict,
            )
        )
        per_core = base.cpu_us / ours.cpu_us
        rows.append(
            (
                f"  server CPU us/req broker / bare ({count} conn)",
                f"{ours.cpu_us:.0f} / {base.cpu_us:.0f} (bare/broker {per_core:.2f})",
                "",
                "",
            )
        )
        generator = max(ours.generator_cpu, base.generator_cpu)
        failures = ours.failures + base.failures
        rows.append((f"  generator CPU share, non-200 answers ({count} conn)", f"{generator:.2f}, {failures}", "", ""))
    return rows


def startup_rows() -> list[Row]:
    progress(f"broker token process: {RUNS} runs each")
    rows = token_startup.measure(RUNS)
    floor_runs = rows[token_startup.FLOOR]
    bare = token_startup.summary(floor_runs)
    token = token_startup.summary(rows[token_startup.TOKEN])
    from_config = token_startup.summary(rows[token_startup.TOKEN_CONFIG])
    ratio = token_startup.paired_ratio(rows[token_startup.TOKEN], floor_runs)
    config_ratio = token_startup.paired_ratio(rows[token_startup.TOKEN_CONFIG], floor_runs)
    install = "editable" if token_startup.editable_install() else "regular"
    return [
        (
            f"broker token bench ({install} install) / {token_startup.FLOOR}",
            f"{token[0]:.1f} / {bare[0]:.1f} ms; median of paired ratios {ratio:.2f}x",
            f"<= {STARTUP_RATIO}x",
            verdict(ratio <= STARTUP_RATIO),
        ),
        ("  p90 ms broker token / floor", f"{token[1]:.1f} / {bare[1]:.1f}", "", ""),
        (
            "  the socket from config.toml instead of BROKER_SOCKET",
            f"{from_config[0]:.1f} ms; median of paired ratios {config_ratio:.2f}x",
            f"<= {STARTUP_RATIO}x",
            verdict(config_ratio <= STARTUP_RATIO),
        ),
    ]


def memory_rows(root: Path) -> list[Row]:
    progress(f"memory: idle, then {MEMORY_REQUESTS:,} token requests")
    (root / "memory").mkdir()
    figures = memory.measure(root / "memory", MEMORY_REQUESTS)
    growth = (figures.loaded_kib - figures.idle_kib) / 1024
    steady = (figures.loaded_kib - figures.warm_kib) / 1024
    base = floor.rss_kib() / 1024
    above = figures.idle_kib / 1024 - base
    return [
        (
            f"daemon RSS idle, every provider configured / {floor.SHOWN}",
            f"{figures.idle_kib / 1024:.1f} / {base:.1f} MiB (floor {above:+.1f})",
            f"<= floor + {IDLE_ABOVE_FLOOR_MIB:.0f} MiB",
            verdict(above <= IDLE_ABOVE_FLOOR_MIB),
        ),
        (
            f"  RSS after {figures.requests:,} requests (growth)",
            f"{figures.loaded_kib / 1024:.1f} MiB (+{growth:.1f})",
            f"growth < {GROWTH_MIB:.0f} MiB",
            verdict(growth < GROWTH_MIB and figures.failures == 0),
        ),
        (f"  growth after the first {memory.WARM_REQUESTS:,} requests", f"+{steady:.1f} MiB", "", ""),
    ]


def activation_rows(root: Path) -> list[Row]:
    if not activation.available():
        return [("socket activation to first answer", f"skipped: {activation.TOOL} not installed", "", "")]
    progress(f"socket activation: {ACTIVATIONS} runs, each next to a floor process")
    (root / "activation").mkdir()
    samples, floors = activation.measure(root / "activation", ACTIVATIONS)
    ordered = sorted(samples)
    ratio = activation.median_ms(samples) / activation.median_ms(floors)
    return [
        (
            f"socket activation to first answer (median of {len(samples)})",
            f"{activation.median_ms(samples):.0f} ms (min {ordered[0] * 1000:.0f}, max {ordered[-1] * 1000:.0f})",
            "",
            "",
        ),
        (
            f"  / the floor's whole process, {floor.SHOWN}",
            f"{activation.median_ms(samples):.0f} / {activation.median_ms(floors):.0f} ms = {ratio:.2f}x",
            f"<= {ACTIVATION_RATIO}x",
            verdict(ratio <= ACTIVATION_RATIO),
        ),
    ]


def main() -> int:
    started = time.perf_counter()
    header = machine()
    with tempfile.TemporaryDirectory(prefix="bkb-", dir="/tmp") as tmp:
        root = Path(tmp)
        sections = {
            "throughput": lambda: throughput_rows(root),
            "token": startup_rows,
            "memory": lambda: memory_rows(root),
            "activation": lambda: activation_rows(root),
            "proxy": lambda: proxy.rows(root, SECONDS, WARMUP, ROUNDS, STREAM_MIB, LITELLM_STREAM_MIB),
            "scale": lambda: scale.rows(root),
        }
        rows = [row for name, section in sections.items() if name in ONLY for row in section()]
    print(header)
    print(
        f"throughput: median of {ROUNDS} rounds of {SECONDS:g} s (after {WARMUP:g} s warm-up) per setting, "
        "GET /v1/token/bench, one request at a time per keep-alive connection\n"
    )
    print_table(rows)
    print(
        "\nserver CPU per request is the figure least moved by other work on the machine; its bare/broker ratio\n"
        "is the throughput share broker would reach with a core to itself. With 32 requests in flight on one\n"
        "event loop, each waits for the 31 others: compare broker's p99 with the bare app's own."
    )
    print(f"total {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
