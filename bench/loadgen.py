"""Load generator: N keep-alive connections to a Unix socket or a TCP port, one request at a time on each.

Hand-rolled HTTP/1.1 over asyncio streams (stdlib only, far cheaper per request than an
HTTP client library, so the generator is not what is measured). Each connection sends a
request, reads the whole response (head, then a Content-Length or chunked body), and
only then sends the next. After a warm-up, it runs for ``--seconds`` or until
``--requests`` answers in all, and prints one JSON line of figures: requests/s, latency
percentiles, and the time to the first body byte (what a streaming client waits for).

    python bench/loadgen.py --socket PATH --path /v1/token/bench --connections 32 --seconds 5
    python bench/loadgen.py --tcp 127.0.0.1:8080 --method POST --path /v1/chat/completions \
        --header 'Authorization: Bearer KEY' --body '{"model": "m", "stream": true}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field


class BadResponse(Exception):
    """The server answered something this generator cannot count as one good response."""


@dataclass
class Tally:
    """Shared by every connection of one phase."""

    deadline_ns: int | None
    budget: int | None
    record: bool
    started: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_bytes_ns: list[int] = field(default_factory=list)
    """From sending the request to the first byte of its body."""
    failures: int = 0

    def take(self) -> bool:
        """Whether another request may start (time left, or requests left in the budget)."""
        if self.budget is not None:
            if self.started >= self.budget:
                return False
            self.started += 1
            return True
        assert self.deadline_ns is not None
        return time.perf_counter_ns() < self.deadline_ns


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int, int]:
    """One HTTP/1.1 response: its status, body length, and when its first body byte was read (ns)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        return (status, *await _read_chunked(reader))
    if length is None:
        raise BadResponse("response without Content-Length or chunked encoding")
    first = await reader.read(min(length, 65536)) if length else b""
    first_ns = time.perf_counter_ns()
    if len(first) < length:
        await reader.readexactly(length - len(first))
    return status, length, first_ns


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[int, int]:
    total, first_ns = 0, 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if not first_ns:  # the body has begun to arrive, however long its first chunk is
            first_ns = time.perf_counter_ns()
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return total, first_ns
        await reader.readexactly(size + 2)
        total += size


async def connection_loop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, tally: Tally
) -> None:
    clock = time.perf_counter_ns
    latencies, first_bytes = tally.latencies_ns, tally.first_bytes_ns
    while tally.take():
        start = clock()
        writer.write(request)
        status, _, first_ns = await read_response(reader)
        elapsed = clock() - start
        if status != 200:
            tally.failures += 1
        elif tally.record:
            latencies.append(elapsed)
            first_bytes.append(first_ns - start)


async def phase(
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    request: bytes,
    *,
    seconds: float | None,
    requests: int | None,
    record: bool,
) -> tuple[Tally, float]:
    """Run every connection until the deadline or budget; the tally and the wall seconds taken."""
    start = time.perf_counter_ns()
    deadline = None if seconds is None else start + int(seconds * 1e9)
    tally = Tally(deadline_ns=deadline, budget=requests, record=record)
    await asyncio.gather(*(connection_loop(r, w, request, tally) for r, w in streams))
    return tally, (time.perf_counter_ns() - start) / 1e9


def percentile(ordered: list[int], share: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))
    return ordered[rank] / 1e6


def build_request(method: str, path: str, headers: list[str], body: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *headers]
    payload = body.encode()
    if payload:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def connect(args: argparse.Namespace) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        return await asyncio.open_connection(host, int(port), limit=1 << 20)
    return await asyncio.open_unix_connection(args.socket, limit=1 << 20)


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    request = build_request(args.method, args.path, args.header, args.body)
    streams = [await connect(args) for _ in range(args.connections)]
    cpu_start = time.process_time()
    try:
        if args.warmup > 0:
            await phase(streams, request, seconds=args.warmup, requests=None, record=False)
        tally, elapsed = await phase(
            streams,
            request,
            seconds=None if args.requests else args.seconds,
            requests=args.requests or None,
            record=True,
        )
    finally:
        for _, writer in streams:
            writer.close()
    cpu = time.process_time() - cpu_start
    ordered = sorted(tally.latencies_ns)
    first = sorted(tally.first_bytes_ns)
    return {
        "connections": args.connections,
        "requests": len(ordered),
        "failures": tally.failures,
        "seconds": elapsed,
        "generator_cpu": cpu / (elapsed + args.warmup),
        "rps": len(ordered) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
        "first_byte_p50_ms": percentile(first, 0.50),
        "first_byte_p99_ms": percentile(first, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="a Unix socket")
    where.add_argument("--tcp", metavar="HOST:PORT")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/v1/token/bench")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--body", default="", help="a JSON request body")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=0, help="a request count instead of a duration")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded requests first")
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
