"""A daemon with one non-expiring credential, for benchmarks that need something to serve."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def running_daemon_with_token(root: Path) -> Iterator[dict[str, str]]:
    """Yield the environment of a ready daemon serving provider ``bench``."""
    state = root / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "NOTIFY_", "LISTEN_"))},
        "BROKER_SOCKET": str(root / "run" / "broker.sock"),
        "BROKER_STATE_DIR": str(state),
        "BROKER_STORE": "file",
        "BROKER_CONFIG": str(root / "config.toml"),
    }
    (root / "config.toml").write_text(CONFIG)
    state.mkdir(mode=0o700)
    FileStore(state, FileKey(state / "key")).put(
        Credential(provider="bench", account="bench", access_token="bench-token-" + "x" * 40, base_url=None)
    )
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
            yield env
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
