"""What the followed-file tests share: an in-process daemon, a simulated CLI, and the race.

The daemon runs in this process on its real socket with its real watchdog observer, so a
test can wait on its change events and move its clock. ``SimulatedCli`` rewrites a CLI's
JSON file the way CLIs do (by rename, or truncate+write in pieces so broker can catch it
half-written). ``race`` runs many rounds of that CLI rewriting or refreshing its file
while broker's refresh comes due; the callers assert no refresh token was reused.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from broker.client import Client
from broker.core.config import load_settings
from broker.core.model import CredentialKey
from broker.daemon.main import Daemon
from broker.daemon.refresher import Status
from broker.followed.files import FileState
from tests.conftest import isolated_env
from tests.fakes.clock import FakeClock

WAIT = 5.0
CLI_ENV = ("CODEX_HOME", "QWEN_HOME", "CLAUDE_CONFIG_DIR", "GEMINI_CLI_HOME", "GOOGLE_APPLICATION_CREDENTIALS")
"""The CLIs' own directory overrides: none of the developer's may leak into a test."""


@dataclass
class InProcess:
    daemon: Daemon
    clock: FakeClock
    env: dict[str, str]
    socket: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                if path.startswith("/v1/login/"):
                    return list(client.stream(method, path, body or {}))
                return client.request(method, path, body)

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def token(self, provider: str, query: str = "") -> Any:
        return await self.call("GET", f"/v1/token/{provider}{query}")

    async def listing(self, provider: str) -> dict[str, Any]:
        """The provider's entry in ``GET /v1/providers``."""
        answer = await self.call("GET", "/v1/providers")
        return dict(next(p for p in answer["providers"] if p["name"] == provider))

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once the live credential set satisfies ``predicate`` (checked after every change)."""

        async def wait() -> None:
            while not predicate():
                await self.daemon.credentials.wait_changed()

        await asyncio.wait_for(wait(), WAIT)

    async def file_state(self, path: Path, wanted: str) -> FileState:
        """Wait until broker holds the file's credential (``ok``) or a problem with it (``error``)."""
        state = self.daemon.credentials.followed.states[path]

        def reached() -> bool:
            return state.problem is not None if wanted == "error" else state.credential is not None

        await self.until(reached)
        return state

    async def attempts(self, key: CredentialKey, count: int) -> Status:
        return await asyncio.wait_for(self.daemon.refresher.wait_attempts(key, count), WAIT)

    async def planned(self, key: CredentialKey) -> float:
        """When broker's timer will next refresh ``key``, once it has planned a refresh still to come."""
        status = await asyncio.wait_for(
            self.daemon.refresher.wait_status(key, lambda s: (s.next_refresh_at or 0) > self.clock.now()), WAIT
        )
        assert status.next_refresh_at is not None
        return status.next_refresh_at

    async def stop(self) -> None:
        await self.daemon.stop()
        self.pool.shutdown()


async def start_daemon(root: Path, config: str, **env_extra: str) -> InProcess:
    """A daemon on a temp HOME with this config, started; ``env_extra`` is added to its environment."""
    env = {k: v for k, v in isolated_env(root).items() if k not in CLI_ENV}
    env.update(env_extra)
    Path(env["BROKER_CONFIG"]).write_text(config)
    clock = FakeClock()
    daemon = Daemon(load_settings(env), clock=clock, env=env)
    await daemon.start()
    return InProcess(daemon, clock, env, Path(env["BROKER_SOCKET"]))


class SimulatedCli:
    """Rewrites a CLI's JSON file the way CLIs do, from a worker thread."""

    def __init__(self, path: Path, rng: random.Random, *, indent: int = 2, newline: bool = True) -> None:
        self.path = path
        self.rng = rng
        self.indent = indent
        self.newline = newline
        self.halfway = threading.Event()
        """Set once a rewrite has reached the disk half done (or, by rename, done)."""

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    def rewrite(self, doc: dict[str, Any], *, in_place: bool) -> None:
        """By rename, or truncate+write in two pieces with an fsync between them."""
        data = json.dumps(doc, indent=self.indent) + ("\n" if self.newline else "")
        if not in_place:
            temp = self.path.with_name(f".cli-{self.rng.random()}.tmp")
            temp.write_text(data)
            temp.replace(self.path)
            self.halfway.set()
            return
        cut = self.rng.randrange(1, len(data))
        with open(self.path, "r+") as file:
            file.truncate(0)
            file.write(data[:cut])
            file.flush()
            os.fsync(file.fileno())
            self.halfway.set()
            file.write(data[cut:])
            file.flush()


@dataclass
class RaceSide:
    """One followed file in a race: whose it is, and where its refresh token sits in the JSON."""

    daemon: Daemon
    clock: FakeClock
    key: CredentialKey
    path: Path
    refresh_token_in: Callable[[dict[str, Any]], str]


@dataclass
class Tally:
    cli_refreshes: int = 0
    broker_refreshes: int = 0


async def settle(side: RaceSide) -> None:
    """Wait until broker owes the file nothing and serves what the file holds."""
    state = side.daemon.credentials.followed.states[side.path]
    while True:
        on_disk = side.refresh_token_in(json.loads(side.path.read_text()))
        live = side.daemon.credentials.get(side.key)
        if state.owed is None and live is not None and live.refresh_token == on_disk:
            return
        await side.daemon.credentials.wait_changed()


async def race(
    side: RaceSide,
    cli: SimulatedCli,
    *,
    rounds: int,
    rng: random.Random,
    touch: Callable[[], None],
    cli_refresh: Callable[[], None],
) -> Tally:
    """Rounds of the CLI rewriting its file (``touch``) just as broker's refresh comes due.

    Now and then the CLI refreshes on its own first (``cli_refresh``): its tokens must win.
    Both callables block (they run in a worker thread); ``touch`` sets ``cli.halfway``.
    """
    loop = asyncio.get_running_loop()
    refresher = side.daemon.refresher
    tally = Tally()
    for _ in range(rounds):
        # broker's next refresh is planned for later: nothing of it is in flight
        status = await asyncio.wait_for(
            refresher.wait_status(side.key, lambda s: (s.next_refresh_at or 0) > side.clock.now()), WAIT
        )
        planned, attempts = status.next_refresh_at, status.attempts
        assert planned is not None
        if rng.random() < 0.2:
            await loop.run_in_executor(None, cli_refresh)
            tally.cli_refreshes += 1
            await asyncio.wait_for(settle(side), WAIT)
            continue
        cli.halfway.clear()
        writer = loop.run_in_executor(None, touch)
        await loop.run_in_executor(None, cli.halfway.wait, WAIT)
        side.clock.advance_to(planned)
        await writer
        await asyncio.wait_for(
            refresher.wait_status(side.key, lambda s, old=status, n=attempts: s is not old or s.attempts > n), WAIT
        )
        tally.broker_refreshes += 1
        await asyncio.wait_for(settle(side), WAIT)
        json.loads(side.path.read_text())  # the file parses at the end of every round
    return tally


def post(
    url: str,
    *,
    form: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """A CLI's own request to an upstream fake (not broker's): the decoded JSON answer.

    HTTP errors are raised: a simulated CLI that gets one has done something wrong.
    """
    if json_body is not None:
        data, content_type = json.dumps(json_body).encode(), "application/json"
    else:
        data, content_type = urlencode(form or {}).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(
        url,
        data=data,
        headers={
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": "SimulatedCli/1.0",
            **(headers or {}),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
