"""A daemon with one non-expiring credential, for benchmarks that need something to serve.

Its HOME, XDG dirs, state and config are private to a temporary root, so nothing of
the developer's own logins (followed CLI files, keyring) changes what is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.store.file_store import FileStore
from broker.store.keys import FileKey

CONFIG = """
[providers.bench]
type = "oauth"
flow = "device"
token_endpoint = "http://127.0.0.1:9/token"
device_authorization_endpoint = "http://127.0.0.1:9/device"
client_id = "bench"
base_url = "{base_url}"
"""
BASE_URL = "https://llm.bench.example/v1"
TOKEN = "bench-token-" + "x" * 40
"""What the stored ``bench`` credential holds (the proxy benchmark's upstream expects it)."""

EVERY_KIND = """
[providers.acme]
type = "oauth"
flow = "pkce"
authorization_endpoint = "http://127.0.0.1:9/authorize"
token_endpoint = "http://127.0.0.1:9/token"
client_id = "acme"
scopes = ["openid", "offline_access"]
base_url = "https://llm.acme.example/v1"

[providers.gateway]
type = "apikey"
base_url = "https://llm.gateway.example/v1"
api = "openai-chat"
auth_header = "bearer"
"""
"""Added to CONFIG when a benchmark wants every kind of provider configured (built-ins always are)."""

TOKEN_PATH = "/v1/token/bench"


@dataclass(frozen=True)
class BenchDaemon:
    env: dict[str, str]
    pid: int
    socket_path: str


def bench_env(root: Path) -> dict[str, str]:
    """The environment of a broker process living entirely under ``root``."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "NOTIFY_", "LISTEN_", "XDG_", "DBUS_"))
        and k.lower() not in ("home", "http_proxy", "https_proxy", "all_proxy")
    }
    return {
        **keep,
        "HOME": str(root / "home"),
        "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_STATE_HOME": str(root / "xstate"),
        "XDG_DATA_HOME": str(root / "data"),
        "BROKER_SOCKET": str(root / "run" / "broker.sock"),
        "BROKER_STATE_DIR": str(root / "state"),
        "BROKER_STORE": "file",
        "BROKER_CONFIG": str(root / "config.toml"),
    }


def prepare(root: Path, extra_config: str = "", base_url: str = BASE_URL) -> dict[str, str]:
    """Write the config and a stored credential for ``bench``; return the environment."""
    env = bench_env(root)
    for name in ("home", "run", "config", "xstate", "data"):
        (root / name).mkdir(mode=0o700, exist_ok=True)
    (root / "config.toml").write_text(CONFIG.format(base_url=base_url) + extra_config)
    state = root / "state"
    state.mkdir(mode=0o700)
    FileStore(state, FileKey(state / "key")).put(
        Credential(provider="bench", account="bench", access_token=TOKEN, base_url=None)
    )
    return env


@contextlib.contextmanager
def running_daemon_with_token(
    root: Path, extra_config: str = "", *, base_url: str = BASE_URL, serve_args: tuple[str, ...] = ()
) -> Iterator[BenchDaemon]:
    """Yield a ready daemon serving provider ``bench``; READY=1 on NOTIFY_SOCKET marks ready."""
    env = prepare(root, extra_config, base_url)
    with ready_daemon(root, env, serve_args) as daemon:
        yield daemon


@contextlib.contextmanager
def ready_daemon(root: Path, env: dict[str, str], serve_args: tuple[str, ...] = ()) -> Iterator[BenchDaemon]:
    """``broker serve`` of this interpreter's broker (run from ``root``: not the checkout's), once READY=1."""
    notify = root / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(20)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--log-level", "warning", *serve_args],
            env={**env, "NOTIFY_SOCKET": str(notify)},
            stdin=subprocess.DEVNULL,
            cwd=root,
        )
        try:
            while b"READY=1" not in listener.recv(4096):
                pass
            yield BenchDaemon(env=env, pid=daemon.pid, socket_path=env["BROKER_SOCKET"])
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


def get(socket_path: str, path: str) -> bytes:
    """The body of one GET on the daemon's socket; raises unless it answered 200."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"chunked" in head.lower():
        raise RuntimeError(f"GET {path}: {head.splitlines()[0]!r}")
    return body


def get_json(socket_path: str, path: str) -> Any:
    return json.loads(get(socket_path, path))
