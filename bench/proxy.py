"""The auth proxy next to calling the upstream directly, and next to LiteLLM's proxy server.

One loopback upstream (``bench/upstream.py``) answers a fixed chat completion and a
streamed one (200 SSE events). Three ways reach it with the same request and the same
upstream key behind them:

- ``direct``: the client calls the upstream with its key;
- ``broker``: ``broker serve --proxy-port 0``, the client sending the proxy key;
- ``LiteLLM``: ``litellm --config`` (its proxy server, from PyPI, in a virtualenv of its
  own: ``make bench`` creates it), the model pointing at the upstream with its key, the
  client sending LiteLLM's master key.

All share the machine's cores with the generator. They take turns, round after round, and
each figure is the median over rounds. A proxy's CPU per request is read from /proc for its
own processes only. Memory: RSS of the proxy's processes before and after one response of
``STREAM_MIB`` MiB streamed through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.daemon_fixture import TOKEN, get_json, running_daemon_with_token
from bench.memory import rss_kib
from bench.table import Row, combined, progress, verdict
from bench.throughput import cpu_ns

HERE = Path(__file__).resolve().parent
LITELLM_KEY = "sk-bench-litellm-master-key"
LITELLM_START_TIMEOUT = 120.0
PLAIN = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say something."}]})
STREAMED = json.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": "Say something."}]})
CHUNK_BYTES = 16 * 1024 + 200
"""What one ``bench-big`` event weighs on the wire, about."""


def big(mib: int) -> str:
    """A request for about ``mib`` MiB of streamed answer (the upstream reads ``max_tokens`` as chunks)."""
    chunks = max(1, (mib << 20) // CHUNK_BYTES)
    return json.dumps(
        {
            "model": "bench-big",
            "stream": True,
            "max_tokens": chunks,
            "messages": [{"role": "user", "content": "Say a lot."}],
        }
    )


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int
    path: str
    key: str
    pid: int | None
    """The proxy's process (its children count too); ``None`` for the upstream itself."""


@dataclass(frozen=True)
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    first_byte_ms: float
    cpu_us: float
    """The proxy's CPU time per request (0 for the upstream itself)."""
    failures: int


def processes(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in os.listdir(f"/proc/{current}/task"):
            with contextlib.suppress(OSError):
                queue += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def tree_cpu_ns(pid: int | None) -> int:
    return 0 if pid is None else sum(cpu_ns(p) for p in processes(pid))


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in processes(pid))


def load(endpoint: Endpoint, body: str, connections: int, seconds: float, warmup: float) -> Figures:
    argv = [sys.executable, str(HERE / "loadgen.py"), "--tcp", f"{endpoint.host}:{endpoint.port}"]
    argv += ["--method", "POST", "--path", endpoint.path, "--header", f"Authorization: Bearer {endpoint.key}"]
    argv += ["--body", body, "--connections", str(connections), "--seconds", str(seconds), "--warmup", str(warmup)]
    before = tree_cpu_ns(endpoint.pid)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    spent = tree_cpu_ns(endpoint.pid) - before
    figures = json.loads(done.stdout)
    measured_share = figures["seconds"] / (figures["seconds"] + warmup)
    return Figures(
        rps=figures["rps"],
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        first_byte_ms=figures["first_byte_p50_ms"],
        cpu_us=spent * measured_share / max(1, figures["requests"]) / 1000,
        failures=int(figures["failures"]),
    )


SETTINGS = {"plain, 1 conn": (PLAIN, 1), "plain, 32 conn": (PLAIN, 32), "streamed, 1 conn": (STREAMED, 1)}


def compare(endpoints: list[Endpoint], seconds: float, warmup: float, rounds: int) -> dict[tuple[str, str], Figures]:
    """Median figures per (endpoint, setting), the endpoints taking turns within each round."""
    samples: dict[tuple[str, str], list[Figures]] = {}
    for _ in range(rounds):
        for setting, (body, connections) in SETTINGS.items():
            for endpoint in endpoints:
                figures = load(endpoint, body, connections, seconds, warmup)
                samples.setdefault((endpoint.name, setting), []).append(figures)
    return {key: combined(values, summed=("failures",)) for key, values in samples.items()}


def stream_through(endpoint: Endpoint, mib: int, timeout: float = 600.0) -> int:
    """Ask for ``mib`` MiB of streamed answer and read all of it, keeping none; bytes read."""
    body = big(mib).encode()
    head = (
        f"POST {endpoint.path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {endpoint.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    total = 0
    with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        first = sock.recv(65536)
        if not first.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{endpoint.name} answered {first.splitlines()[0]!r}")
        total = len(first)
        buffer = bytearray(1 << 20)
        while received := sock.recv_into(buffer):
            total += received
    return total


@dataclass(frozen=True)
class StreamMemory:
    before_kib: int
    after_kib: int
    streamed: int
    seconds: float


def memory_after_stream(endpoint: Endpoint, mib: int) -> StreamMemory:
    assert endpoint.pid is not None
    before = tree_rss_kib(endpoint.pid)
    start = time.perf_counter()
    streamed = stream_through(endpoint, mib)
    elapsed = time.perf_counter() - start
    time.sleep(0.5)  # the proxy finishes its own bookkeeping of the response
    return StreamMemory(before, tree_rss_kib(endpoint.pid), streamed, elapsed)


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    """The loopback upstream; yields its port."""
    argv = [sys.executable, str(HERE / "upstream.py"), TOKEN]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def broker_proxy(root: Path, upstream_port: int) -> Iterator[Endpoint]:
    """A daemon whose ``bench`` provider is the upstream, with its proxy on a free port."""
    base_url = f"http://127.0.0.1:{upstream_port}/v1"
    with running_daemon_with_token(root, base_url=base_url, serve_args=("--proxy-port", "0")) as daemon:
        answer = get_json(daemon.socket_path, "/v1/proxy/bench")
        host_port = answer["base_url"].split("//", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        yield Endpoint("broker", host, int(port), "/bench/chat/completions", answer["access_token"], daemon.pid)


def litellm_command() -> Path | None:
    """LiteLLM's CLI from the bench's own virtualenv (``BENCH_LITELLM`` or ``.bench-litellm``)."""
    venv = Path(os.environ.get("BENCH_LITELLM", HERE.parent / ".bench-litellm")).resolve()
    command = venv / "bin" / "litellm"
    return command if command.exists() else None


LITELLM_CONFIG = """\
model_list:
  - model_name: bench
    litellm_params: {{model: openai/bench, api_base: "http://127.0.0.1:{port}/v1", api_key: "{key}"}}
  - model_name: bench-big
    litellm_params: {{model: openai/bench-big, api_base: "http://127.0.0.1:{port}/v1", api_key: "{key}"}}
general_settings:
  master_key: "{master}"
"""


@contextlib.contextmanager
def litellm_proxy(root: Path, command: Path, upstream_port: int) -> Iterator[Endpoint]:
    """``litellm --config`` as its docs start it, with what it would fetch at start kept local."""
    config = root / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=upstream_port, key=TOKEN, master=LITELLM_KEY))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    log = (root / "litellm.log").open("wb")
    process = subprocess.Popen(argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + LITELLM_START_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LiteLLM did not start; see {root / 'litellm.log'}")
            time.sleep(0.5)
        yield Endpoint("LiteLLM", "127.0.0.1", port, "/v1/chat/completions", LITELLM_KEY, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    return False


ADDED_P50_MS = 0.3
THROUGHPUT_SHARE = 0.4
FIRST_BYTE_MS = 1.0
GROWTH_MIB_PER_GIB = 5.0


def rows(root: Path, seconds: float, warmup: float, rounds: int, stream_mib: int, litellm_mib: int) -> list[Row]:
    """The proxy's rows of the table; LiteLLM's figures in parentheses where it is installed."""
    command = litellm_command()
    progress(f"proxy: {rounds} rounds x {len(SETTINGS)} settings x {2 if command is None else 3} ways in")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(upstream())
        direct = Endpoint("direct", "127.0.0.1", port, "/v1/chat/completions", TOKEN, None)
        (root / "proxy").mkdir()
        broker = stack.enter_context(broker_proxy(root / "proxy", port))
        others = [] if command is None else [stack.enter_context(litellm_proxy(root, command, port))]
        results = compare([direct, broker, *others], seconds, warmup, rounds)
        progress(
            f"proxy: {stream_mib} MiB streamed through broker"
            + ("" if command is None else f", {litellm_mib} MiB through LiteLLM")
        )
        streams = [memory_after_stream(broker, stream_mib)] + [memory_after_stream(e, litellm_mib) for e in others]
    return figures_rows(results, streams, litellm=command is not None)


def figures_rows(results: dict[tuple[str, str], Figures], streams: list[StreamMemory], *, litellm: bool) -> list[Row]:
    def get(name: str, setting: str) -> Figures:
        return results[(name, setting)]

    def both(broker: str, other: str) -> str:
        return f"{broker} ({other})" if litellm else broker

    names = ["direct", "broker", *(["LiteLLM"] if litellm else [])]
    who = " / ".join(names)
    rows: list[Row] = []
    for setting in ("plain, 1 conn", "plain, 32 conn"):
        figures = [get(name, setting) for name in names]
        base, ours = figures[0], figures[1]
        theirs = figures[2] if litellm else ours
        share = ours.rps / base.rps
        rows.append((f"proxy {setting}: req/s {who}", " / ".join(f"{f.rps:,.0f}" for f in figures), "", ""))
        target, result = "", ""
        if setting.endswith(" 1 conn"):
            target, result = f"broker <= {ADDED_P50_MS}", verdict(ours.p50_ms - base.p50_ms <= ADDED_P50_MS)
        rows.append(
            (
                "  added p50 / p99 ms, broker (LiteLLM)" if litellm else "  added p50 / p99 ms, broker",
                both(f"{ours.p50_ms - base.p50_ms:.2f} / {ours.p99_ms - base.p99_ms:.2f}",
                     f"{theirs.p50_ms - base.p50_ms:.1f} / {theirs.p99_ms - base.p99_ms:.1f}"),
                target,
                result,
            )
        )  # fmt: skip
        if setting.endswith("32 conn"):
            rows.append(
                (
                    "  share of direct's req/s, broker (LiteLLM)" if litellm else "  share of direct's req/s, broker",
                    both(f"{share:.2f}", f"{theirs.rps / base.rps:.3f}"),
                    f">= {THROUGHPUT_SHARE}",
                    verdict(share >= THROUGHPUT_SHARE),
                )
            )
        rows.append(
            (
                "  proxy CPU us per request, broker (LiteLLM)" if litellm else "  proxy CPU us per request, broker",
                both(f"{ours.cpu_us:.0f}", f"{theirs.cpu_us:,.0f}"),
                "",
                "",
            )
        )
    figures = [get(name, "streamed, 1 conn") for name in names]
    base, ours = figures[0], figures[1]
    theirs = figures[2] if litellm else ours
    rows.append(
        (
            f"proxy streamed (200 SSE events), 1 conn: first byte ms {who}",
            " / ".join(f"{f.first_byte_ms:.2f}" for f in figures),
            "",
            "",
        )
    )
    rows.append(
        (
            "  first-byte overhead ms, broker (LiteLLM)" if litellm else "  first-byte overhead ms, broker",
            both(f"{ours.first_byte_ms - base.first_byte_ms:.2f}", f"{theirs.first_byte_ms - base.first_byte_ms:.1f}"),
            f"broker <= {FIRST_BYTE_MS}",
            verdict(ours.first_byte_ms - base.first_byte_ms <= FIRST_BYTE_MS),
        )
    )
    rows.append(("  whole stream p50 ms " + who, " / ".join(f"{f.p50_ms:.1f}" for f in figures), "", ""))
    rows.append(
        (
            "  proxy CPU us per stream, broker (LiteLLM)" if litellm else "  proxy CPU us per stream, broker",
            both(f"{ours.cpu_us:.0f}", f"{theirs.cpu_us:,.0f}"),
            "",
            "",
        )
    )
    failures = sum(f.failures for f in results.values())
    rows.append(("  non-200 answers, all proxy settings", str(failures), "0", verdict(failures == 0)))
    ours_stream = streams[0]
    growth = (ours_stream.after_kib - ours_stream.before_kib) / 1024
    per_gib = growth / (ours_stream.streamed / (1 << 30))
    rate = ours_stream.streamed / (1 << 20) / ours_stream.seconds
    rows.append(
        (
            f"proxy RSS growth, {ours_stream.streamed / (1 << 20):,.0f} MiB streamed through broker",
            f"{ours_stream.before_kib / 1024:.1f} -> {ours_stream.after_kib / 1024:.1f} MiB "
            f"({growth:+.1f}; {per_gib:+.1f} per GiB; {rate:,.0f} MiB/s)",
            f"< {GROWTH_MIB_PER_GIB:.0f} MiB per GiB",
            verdict(per_gib < GROWTH_MIB_PER_GIB),
        )
    )
    if litellm:
        theirs_stream = streams[1]
        grown = (theirs_stream.after_kib - theirs_stream.before_kib) / 1024
        rows.append(
            (
                f"  LiteLLM, {theirs_stream.streamed / (1 << 20):,.0f} MiB streamed (1 GiB would take minutes)",
                f"{theirs_stream.before_kib / 1024:.1f} -> {theirs_stream.after_kib / 1024:.1f} MiB ({grown:+.1f}; "
                f"{theirs_stream.streamed / (1 << 20) / theirs_stream.seconds:,.1f} MiB/s)",
                "",
                "",
            )
        )
    return rows
