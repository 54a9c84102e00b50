"""A daemon with one non-expiring credential, for benchmarks that need something to serve.

Its HOME, XDG dirs, state and config are private to a temporary root, so nothing of
the developer's own logins (followed CLI files, keyring) changes what is measured.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from broker.model import Credential
from broker.store.file_store import FileStore
from broker.store.keys import FileKey

CONFIG = """
[providers.bench]
type = "oauth"
flow = "device"
token_endpoint = "http://127.0.0.1:9/token"
device_authorization_endpoint = "http://127.0.0.1:9/device"
client_id = "bench"
base_url = "https://llm.bench.example/v1"
"""

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
        if not k.startswith(("BROKER_", "NOTIFY_", "LISTEN_", "XDG_")) and k not in ("HOME",)
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


def prepare(root: Path, extra_config: str = "") -> dict[str, str]:
    """Write the config and a stored credential for ``bench``; return the environment."""
    env = bench_env(root)
    for name in ("home", "run", "config", "xstate", "data"):
        (root / name).mkdir(mode=0o700, exist_ok=True)
    (root / "config.toml").write_text(CONFIG + extra_config)
    state = root / "state"
    state.mkdir(mode=0o700)
    FileStore(state, FileKey(state / "key")).put(
        Credential(provider="bench", account="bench", access_token="bench-token-" + "x" * 40, base_url=None)
    )
    return env


@contextlib.contextmanager
def running_daemon_with_token(root: Path, extra_config: str = "") -> Iterator[BenchDaemon]:
    """Yield a ready daemon serving provider ``bench``; READY=1 on NOTIFY_SOCKET marks ready."""
    env = prepare(root, extra_config)
    notify = root / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(20)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--log-level", "warning"],
            env={**env, "NOTIFY_SOCKET": str(notify)},
            stdin=subprocess.DEVNULL,
        )
        try:
            while b"READY=1" not in listener.recv(4096):
                pass
            yield BenchDaemon(env=env, pid=daemon.pid, socket_path=env["BROKER_SOCKET"])
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
