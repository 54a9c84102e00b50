"""``make bench``: every figure of the benchmark in one run, as one table against its targets.

A benchmark reports; it does not fail: the exit status is 0 whether targets pass or miss.
Knobs (environment): BENCH_SECONDS (measured seconds per throughput round, default 2),
BENCH_WARMUP (unrecorded seconds before each, 0.5), BENCH_ROUNDS (3), BENCH_RUNS
(``broker token`` runs, 40), BENCH_MEMORY_REQUESTS (100000), BENCH_ACTIVATIONS (10).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import activation, memory, throughput, token_startup
from bench.daemon_fixture import running_daemon_with_token

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "0.5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "40"))
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "100000"))
ACTIVATIONS = int(os.environ.get("BENCH_ACTIVATIONS", "10"))
CONNECTIONS = [1, 32]

THROUGHPUT_SHARE = 0.8
P99_MS = 3.0
STARTUP_RATIO = 1.15
GROWTH_MIB = 5.0

Row = tuple[str, str, str, str]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


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
    floor = token_startup.summary(rows[token_startup.FLOOR])
    token = token_startup.summary(rows[token_startup.TOKEN])
    from_config = token_startup.summary(rows[token_startup.TOKEN_CONFIG])
    ratio = token[0] / floor[0]
    return [
        (
            "broker token bench (median ms) / python -c floor",
            f"{token[0]:.1f} / {floor[0]:.1f} = {ratio:.2f}x",
            f"<= {STARTUP_RATIO}x",
            verdict(ratio <= STARTUP_RATIO),
        ),
        ("  p90 ms broker token / floor", f"{token[1]:.1f} / {floor[1]:.1f}", "", ""),
        (
            "  the socket from config.toml (tomllib), median ms",
            f"{from_config[0]:.1f} = {from_config[0] / floor[0]:.2f}x",
            "",
            "",
        ),
    ]


def memory_rows(root: Path) -> list[Row]:
    progress(f"memory: idle, then {MEMORY_REQUESTS:,} token requests")
    (root / "memory").mkdir()
    figures = memory.measure(root / "memory", MEMORY_REQUESTS)
    growth = (figures.loaded_kib - figures.idle_kib) / 1024
    steady = (figures.loaded_kib - figures.warm_kib) / 1024
    return [
        ("daemon RSS idle, every provider configured", f"{figures.idle_kib / 1024:.1f} MiB", "", ""),
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
    progress(f"socket activation: {ACTIVATIONS} runs")
    (root / "activation").mkdir()
    samples = activation.measure(root / "activation", ACTIVATIONS)
    ordered = sorted(samples)
    return [
        (
            f"socket activation to first answer (median of {len(samples)})",
            f"{activation.median_ms(samples):.0f} ms (min {ordered[0] * 1000:.0f}, max {ordered[-1] * 1000:.0f})",
            "",
            "",
        )
    ]


def print_table(rows: list[Row]) -> None:
    headers = ("measure", "figure", "target", "result")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]
    line = "  ".join("-" * width for width in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    started = time.perf_counter()
    header = machine()
    with tempfile.TemporaryDirectory(prefix="bkb-", dir="/tmp") as tmp:
        root = Path(tmp)
        rows = throughput_rows(root) + startup_rows() + memory_rows(root) + activation_rows(root)
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
