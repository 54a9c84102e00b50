"""Nobody else can take the owner's daemon down, and floods cannot fill its log.

A flood is a real process (``FLOOD`` below, on the system's Python) that keeps a number
of connections open for a while, reconnecting at once whenever the daemon closes one, as
an attacker would. Meanwhile the owner runs ``broker token`` in a loop and times every
run. The daemon starts with a soft open-files limit of 1024, systemd's default: the
flood alone would use it up unless the daemon raises it and keeps key-less proxy
connections short and few.

Figures (latency, log growth, the flood's own counts) are printed; ``pytest -s`` shows them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login
from tests.test_proxy import PROXY, login_key, proxy_answer

CONNECTIONS = 1100
SECONDS = float(os.environ.get("BROKER_DOS_SECONDS", "30"))
LATENCY_LIMIT = 1.0
LOG_GROWTH_LIMIT = 1 << 20
HALF_SENT = b"POST /openai/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
NOBODY = "65534"
AS_NOBODY = ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]

FLOOD = r"""
import errno, json, resource, selectors, socket, sys, time
target, count, seconds, payload = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
address = target if isinstance(target, str) else tuple(target)
selector = selectors.DefaultSelector()
counts = {"opened": 0, "held_max": 0, "closed_by_daemon": 0, "answered": 0, "failed": 0}
held = 0

def open_one():
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
        sock.close()
        counts["failed"] += 1
        return
    counts["opened"] += 1
    selector.register(sock, selectors.EVENT_WRITE, "connecting")

deadline = time.monotonic() + seconds
print("started", flush=True)
while time.monotonic() < deadline:
    while len(selector.get_map()) < count:
        open_one()
    for key, _ in selector.select(timeout=0.2):
        sock = key.fileobj
        if key.data == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                selector.unregister(sock); sock.close(); counts["failed"] += 1
                continue
            if payload:
                try:
                    sock.send(payload)
                except OSError:
                    pass
            selector.modify(sock, selectors.EVENT_READ, "held")
            held += 1
            counts["held_max"] = max(counts["held_max"], held)
            continue
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            counts["answered"] += 1
            continue
        selector.unregister(sock); sock.close(); held -= 1
        counts["closed_by_daemon"] += 1
print(json.dumps(counts), flush=True)
"""


@dataclass
class Probe:
    """The owner's ``broker token`` runs while the flood lasts: each one's wall time and result."""

    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ordered = sorted(self.times)
        return (
            f"{len(ordered)} runs of broker token, median {1000 * ordered[len(ordered) // 2]:.0f} ms, "
            f"max {1000 * ordered[-1]:.0f} ms, failures {len(self.failures)}"
        )


def system_python() -> str:
    """A Python any uid may run (the flood needs only the standard library)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run the flood with")
    return python


def flood(target: str | tuple[str, int], payload: bytes, *, as_nobody: bool) -> subprocess.Popen[str]:
    argv = [system_python(), "-c", FLOOD, json.dumps(target), str(CONNECTIONS), str(SECONDS), payload.decode()]
    process = subprocess.Popen([*AS_NOBODY, *argv] if as_nobody else argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    return process


def probe_while(process: subprocess.Popen[str], daemon: DaemonProcess, provider: str, expected: str) -> Probe:
    """Run ``broker token`` back to back until the flood ends."""
    probe = Probe()
    while process.poll() is None:
        started = time.monotonic()
        result = daemon.cli("token", provider, timeout=30)
        probe.times.append(time.monotonic() - started)
        if result.returncode != 0 or result.stdout.strip() != expected:
            probe.failures.append(result.stderr.strip())
    return probe


def flood_counts(process: subprocess.Popen[str]) -> dict[str, int]:
    assert process.stdout is not None
    counts: dict[str, int] = json.loads(process.stdout.read().strip().splitlines()[-1])
    return counts


def soft_file_limit(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in line)
    return int(line.split()[3])


def start_with_soft_limit_1024(daemon: DaemonProcess) -> None:
    """Start the daemon the way systemd starts services, with a soft open-files limit of 1024."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    hard = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip() or 0)
    if hard < 4 * CONNECTIONS:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room above {CONNECTIONS} connections")
    daemon.start(command=("prlimit", "--nofile=1024:", sys.executable, "-m", "broker"))
    assert daemon.process is not None
    assert soft_file_limit(daemon.process.pid) > 4 * CONNECTIONS, "the daemon kept the soft limit of 1024"


@pytest.mark.slow
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run the flood as another uid")
def test_another_uid_holding_half_sent_proxy_requests_cannot_stall_broker_token(daemon: DaemonProcess):
    daemon.write_config(PROXY)
    start_with_soft_limit_1024(daemon)
    login_key(daemon, "openai", "sk-dos-0123456789")
    port = int(proxy_answer(daemon, "openai")["base_url"].split(":")[2].split("/")[0])
    log_before = daemon.log_path.stat().st_size

    attacker = flood(("127.0.0.1", port), HALF_SENT, as_nobody=True)
    probe = probe_while(attacker, daemon, "openai", "sk-dos-0123456789")
    counts = flood_counts(attacker)
    growth = daemon.log_path.stat().st_size - log_before

    print(f"\nproxy flood by uid {NOBODY}: {counts}; {probe.summary()}; daemon log +{growth} bytes")
    assert counts["held_max"] >= CONNECTIONS, "the flood never held its connections"
    assert probe.failures == []
    assert max(probe.times) < LATENCY_LIMIT, probe.summary()
    assert growth < LOG_GROWTH_LIMIT
    assert daemon.cli("token", "openai").stdout.strip() == "sk-dos-0123456789"


@pytest.mark.slow
def test_the_owners_own_idle_connections_cannot_stall_broker_token(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    start_with_soft_limit_1024(daemon)
    device_login(daemon, oauth)
    token = daemon.cli("token", "acme").stdout.strip()
    log_before = daemon.log_path.stat().st_size

    idle = flood(str(daemon.socket_path), b"", as_nobody=False)
    probe = probe_while(idle, daemon, "acme", token)
    counts = flood_counts(idle)
    growth = daemon.log_path.stat().st_size - log_before

    print(f"\n{CONNECTIONS} idle socket connections of the owner: {counts}; {probe.summary()}; log +{growth} bytes")
    assert counts["held_max"] >= CONNECTIONS
    assert probe.failures == []
    assert max(probe.times) < LATENCY_LIMIT, probe.summary()
    assert growth < LOG_GROWTH_LIMIT


def test_a_full_accept_queue_is_logged_once_not_per_slot(daemon: DaemonProcess, oauth: FakeOAuthServer):
    """With a hard limit of 64 descriptors nothing can be raised: accept() fails, and says so once."""
    daemon.write_config(acme_config(oauth))
    daemon.start(command=("prlimit", "--nofile=64:64", sys.executable, "-m", "broker"))
    device_login(daemon, oauth)
    token = daemon.cli("token", "acme").stdout.strip()
    before = daemon.log_path.stat().st_size
    idle = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(daemon.socket_path))
            idle.append(sock)
        with pytest.raises(TimeoutError):  # the daemon can take no more: this one waits in the queue
            with socket.socket(socket.AF_UNIX) as late:
                late.settimeout(3)
                late.connect(str(daemon.socket_path))
                late.sendall(b"GET /v1/health HTTP/1.1\r\nHost: broker\r\n\r\n")
                late.recv(1)
    finally:
        for sock in idle:
            sock.close()
    assert daemon.cli("token", "acme", timeout=30).stdout.strip() == token, "accepting again once some closed"
    added = daemon.log_path.read_bytes()[before:].decode()
    assert added.count("cannot accept connections: Too many open files (open files limit 64)") == 1, added
    assert "Traceback" not in added and "out of system resource" not in added
    assert len(added) < 4096
