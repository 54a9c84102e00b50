"""Fixtures that run the real daemon as a process on a real Unix socket.

Each test gets a private HOME, runtime dir, state dir and config; readiness is the
daemon's own sd_notify ``READY=1`` on a socket the test listens on, not a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client import Client
from tests.fakes.oauth_server import FakeOAuthServer

READY_TIMEOUT = 15.0


class DaemonProcess:
    """``broker serve`` in a subprocess, plus helpers to run CLI commands against it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"
        self.socket_path = Path(env["BROKER_SOCKET"])
        self.config_path = Path(env.get("BROKER_CONFIG", root / "config.toml"))
        self.state_dir = Path(env["BROKER_STATE_DIR"])

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        *,
        command: tuple[str, ...] = (sys.executable, "-m", "broker"),
        cwd: Path | None = None,
    ) -> DaemonProcess:
        """``broker serve`` (``command`` says how broker is started), ready when it says READY=1."""
        notify_path = self.root / f"notify-{os.urandom(4).hex()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(notify_path))
            listener.settimeout(READY_TIMEOUT)
            env = {**self.env, "NOTIFY_SOCKET": str(notify_path), **(extra_env or {})}
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [*command, "serve", "--log-level", "debug", *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
            try:
                while b"READY=1" not in listener.recv(4096):
                    pass
            except TimeoutError:
                self.stop()
                raise AssertionError(f"daemon not ready in {READY_TIMEOUT}s:\n{self.log()}") from None
            finally:
                notify_path.unlink(missing_ok=True)
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def restart(self) -> DaemonProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> Client:
        return Client(self.socket_path, timeout=30)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self.client() as client:
            return client.request(method, path, body)

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )


def read_event(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The next JSON event a ``broker login --json`` prints (blocking read, bounded by the test timeout)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"login ended early: {process.stderr.read() if process.stderr else ''}"
    event: dict[str, Any] = json.loads(line)
    return event


def isolated_env(root: Path) -> dict[str, str]:
    """A private environment: nothing of the developer's HOME, keyring or proxies leaks in."""
    for name in ("home", "run", "config", "state", "data"):
        (root / name).mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "XDG_", "LISTEN_", "NOTIFY_"))
        and k.lower() not in ("https_proxy", "http_proxy", "all_proxy")
    }
    env.update(
        HOME=str(root / "home"),
        XDG_RUNTIME_DIR=str(root / "run"),
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_STATE_HOME=str(root / "state"),
        XDG_DATA_HOME=str(root / "data"),
        BROKER_SOCKET=str(root / "run" / "broker" / "broker.sock"),
        BROKER_CONFIG=str(root / "config.toml"),
        BROKER_STATE_DIR=str(root / "state" / "broker"),
        BROKER_STORE="file",
        NO_PROXY="*",
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    return env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon not yet started: write its config, then ``start()``."""
    process = DaemonProcess(short_tmp, isolated_env(short_tmp))
    process.write_config("")
    yield process
    process.stop()


@pytest.fixture
def oauth() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(device_interval=0.05, access_token_lifetime=3600) as server:
        yield server


TEST_RUN_CALLERS = 'callers = ["pytest"]'
"""For tests of something else than the ``callers`` policy: Claude's and Gemini CLI's logins are
served to this test run (pytest and what it starts). tests/test_callers.py proves the defaults."""


def acme_config(server: FakeOAuthServer, *, flow: str = "device", extra: str = "") -> str:
    """A ``[providers.acme]`` table pointing at the fake server through discovery."""
    return f"""
[providers.acme]
type = "oauth"
flow = "{flow}"
issuer = "{server.issuer}"
client_id = "broker-cli"
scopes = ["openid", "offline_access"]
base_url = "https://llm.acme.example/v1"
api = "openai-chat"
{extra}
"""
