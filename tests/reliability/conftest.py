"""An in-process daemon against the fault-injecting upstream, on its real socket.

The daemon runs in the test's event loop so the test owns its clock; clients reach it
over the Unix socket from threads of their own (the daemon's store calls use the
loop's default pool), and the CLI runs as a real subprocess against the same socket.
The login is seeded in the store as a completed login leaves it, with tokens the
upstream issued, so a test starts one refresh away from its fault.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.client import Client
from broker.core.config import load_settings
from broker.core.errors import BrokerError
from broker.core.model import Credential, CredentialKey
from broker.daemon.main import Daemon
from broker.daemon.refresher import Status
from broker.store.base import Store
from broker.store.select import open_store
from tests.conftest import isolated_env
from tests.fakes.clock import FakeClock
from tests.fakes.faulty_upstream import CLIENT_ID, FaultyUpstream
from tests.followed_harness import CLI_ENV

KEY: CredentialKey = ("acme", "alice")
WAIT = 20.0


def acme_config(upstream: FaultyUpstream) -> str:
    """A custom OAuth provider whose token endpoint is the faulty upstream."""
    return f"""
[providers.acme]
type = "oauth"
token_endpoint = "{upstream.token_url}"
client_id = "{CLIENT_ID}"
base_url = "https://llm.acme.example/v1"
api = "openai-chat"
"""


def seeded_credential(upstream: FaultyUpstream, now: float) -> Credential:
    """The credential a finished login holds: tokens the upstream issued just now."""
    access, refresh = upstream.issue()
    return Credential(
        provider="acme",
        account="alice",
        access_token=access,
        refresh_token=refresh,
        expires_at=now + upstream.lifetime,
        issued_at=now,
        base_url="https://llm.acme.example/v1",
        api="openai-chat",
    )


def file_store(state_dir: Path) -> Store:
    """The file store as the daemon opens it: its key in a key file, or in the keyring where a
    Secret Service answers (CI), so what a test seeds or reads is what the daemon reads or wrote."""
    return open_store("file", state_dir)


@dataclass
class Rig:
    daemon: Daemon
    clock: FakeClock
    upstream: FaultyUpstream
    socket: Path
    env: dict[str, str]
    clients: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32))

    async def call(self, method: str, path: str) -> Any:
        """The decoded answer, or the daemon's error raised as the client raises it."""

        def call() -> Any:
            with Client(self.socket, timeout=60) as client:
                return client.request(method, path)

        return await asyncio.get_running_loop().run_in_executor(self.clients, call)

    async def token(self, query: str = "") -> dict[str, Any]:
        answer: dict[str, Any] = await self.call("GET", f"/v1/token/acme{query}")
        return answer

    async def error(self, method: str, path: str) -> BrokerError:
        try:
            await self.call(method, path)
        except BrokerError as exc:
            return exc
        raise AssertionError(f"{method} {path} succeeded")

    async def account(self) -> dict[str, Any]:
        """The account's entry in ``GET /v1/providers``, what ``broker status`` shows."""
        listing = await self.call("GET", "/v1/providers")
        acme = next(p for p in listing["providers"] if p["name"] == "acme")
        (account,) = acme["accounts"]
        return dict(account)

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``broker`` command as a real process against this daemon's socket."""

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "broker", *args], env=self.env, capture_output=True, text=True, timeout=60
            )

        return await asyncio.get_running_loop().run_in_executor(self.clients, run)

    @property
    def status(self) -> Status:
        return self.daemon.refresher.status(KEY)

    @property
    def credential(self) -> Credential:
        credential = self.daemon.credentials.get(KEY)
        assert credential is not None
        return credential

    async def attempts(self, count: int) -> Status:
        return await asyncio.wait_for(self.daemon.refresher.wait_attempts(KEY, count), WAIT)

    async def planned(self) -> float:
        """The next refresh the timer plans, once one lies ahead of the clock."""
        status = await asyncio.wait_for(
            self.daemon.refresher.wait_status(KEY, lambda s: (s.next_refresh_at or 0) > self.clock.now()), WAIT
        )
        assert status.next_refresh_at is not None
        return status.next_refresh_at

    def stored(self) -> Credential:
        """The credential as the store file holds it (read as a restarted daemon would)."""
        (credential,) = file_store(Path(self.env["BROKER_STATE_DIR"])).load()
        return credential


async def start_rig(
    root: Path,
    upstream: FaultyUpstream,
    clock: FakeClock,
    *,
    timeout: float | None = None,
    state_dir: Path | None = None,
) -> Rig:
    env = {k: v for k, v in isolated_env(root).items() if k not in CLI_ENV}
    if state_dir is not None:
        env["BROKER_STATE_DIR"] = str(state_dir)
    quick = "" if timeout is None else f"\n[http]\ntimeout = {timeout}\n"  # a hang then costs seconds
    Path(env["BROKER_CONFIG"]).write_text(acme_config(upstream) + quick)
    store = file_store(Path(env["BROKER_STATE_DIR"]))
    store.put(seeded_credential(upstream, clock.now()))
    daemon = Daemon(load_settings(env), clock=clock, store=store, env=env)
    await daemon.start()
    return Rig(daemon, clock, upstream, Path(env["BROKER_SOCKET"]), env)


def leaked_into(records: list[logging.LogRecord], secrets: set[str]) -> list[str]:
    """Log records (message or traceback) holding any of ``secrets``, whole or by 16 characters."""
    formatter = logging.Formatter()
    found = []
    for record in records:
        text = record.getMessage() + (formatter.formatException(record.exc_info) if record.exc_info else "")
        if any(probe in text for secret in secrets for probe in (secret, secret[:16], secret[-16:])):
            found.append(f"{record.name}: {record.getMessage()[:80]}")
    return found


@pytest.fixture
async def rig_factory(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Any]:
    """``await make(upstream, clock, timeout=...)``: a started rig, stopped after the test.

    Afterwards, every log record of the run is searched for the upstream's tokens, and
    for tracebacks: a fault must be reported in a line, never with a stack or a secret.
    """
    caplog.set_level(logging.DEBUG)
    started: list[Rig] = []

    async def make(upstream: FaultyUpstream, clock: FakeClock, *, timeout: float | None = None) -> Rig:
        upstream.now = clock.now
        upstream.start()
        rig = await start_rig(short_tmp, upstream, clock, timeout=timeout)
        started.append(rig)
        return rig

    yield make
    for rig in started:
        await rig.daemon.stop()
        rig.upstream.stop()
        rig.clients.shutdown(wait=False)
    records = caplog.get_records("call") + caplog.get_records("setup")
    for rig in started:
        assert leaked_into(records, rig.upstream.tokens()) == []
    assert [r.getMessage() for r in records if r.exc_info and r.name.startswith("broker")] == []
