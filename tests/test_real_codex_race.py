"""The real Codex CLI and broker share one ``auth.json``: no refresh token is ever presented twice.

The token server rotates refresh tokens and, like OpenAI, revokes the whole login when
any refresh token comes twice; it holds each refresh answer back a random moment, so
every refresh has a window in which the token is spent but the new one not yet written.
Codex (pinned in tests/peers/npm.txt) runs ``codex exec`` against a loopback backend that
refuses expired access tokens. Each race starts broker and Codex at random offsets:

- ``both_expired``: both find an expired token at the same moment (a laptop waking up);
- ``both_expired_client``: the same, while a client asks broker for a fresh token;
- ``codex_starts_mid_refresh``: Codex starts while broker redeems a token about to expire;
- ``broker_starts_mid_refresh``: broker starts while Codex redeems an expired one.

After every race the file and broker hold the same tokens, the server accepts them, and no
refresh token was presented twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request

from broker.client import Client
from broker.core.clock import SystemClock
from broker.core.config import load_settings
from broker.core.errors import BrokerError
from broker.daemon.main import Daemon
from tests.conftest import isolated_env
from tests.fakes.codex_backend import REPLY, FakeCodexBackend
from tests.fakes.openai_auth import ALICE, FakeOpenAIAuth
from tests.peers import npm_program

KEY = ("codex", "codex-cli")
RACES = 8
"""Per scenario: 4 scenarios, 32 races."""
SETTLE = 20.0
SCENARIOS = ("both_expired", "both_expired_client", "codex_starts_mid_refresh", "broker_starts_mid_refresh")

pytestmark = pytest.mark.slow


class SlowRotatingAuth(FakeOpenAIAuth):
    """Redeems a refresh token at once, then holds the answer back a random moment."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.presented: Counter[str] = Counter()
        self.by: Counter[str] = Counter()
        """Refresh requests by sender: ``codex`` (its URL says so) or ``broker`` (which speaks as Codex)."""

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            body = request.get_json(silent=True) if request.mimetype == "application/json" else None
            if isinstance(body, dict) and body.get("grant_type") == "refresh_token":
                self.presented[str(body.get("refresh_token"))] += 1
                self.by[request.args.get("by", "broker")] += 1
            response = self.handle(request)
            delay = self.rng.uniform(0.0, 0.6) if body else 0.0
        time.sleep(delay)  # the token is spent; its successor is on its way
        return response(environ, start_response)

    def reused(self) -> list[str]:
        return [token for token, times in self.presented.items() if times > 1]


@pytest.fixture(scope="module")
def codex() -> Path:
    return npm_program("codex")


@pytest.fixture
def servers() -> Iterator[tuple[SlowRotatingAuth, FakeCodexBackend]]:
    auth = SlowRotatingAuth(random.Random(1455))
    with auth, FakeCodexBackend(auth) as backend:
        yield auth, backend


class Race:
    """One race: a fresh ``CODEX_HOME`` with a login, broker and Codex started at given moments."""

    def __init__(self, root: Path, auth: SlowRotatingAuth, backend: FakeCodexBackend, codex: Path) -> None:
        self.root, self.auth, self.backend, self.codex = root, auth, backend, codex
        self.home = root / "codex-home"
        self.home.mkdir(parents=True)
        self.path = self.home / "auth.json"
        self.daemon: Daemon | None = None
        self.env = {k: v for k, v in isolated_env(root).items() if k != "CODEX_HOME"}
        self.env["CODEX_HOME"] = str(self.home)
        Path(self.env["BROKER_CONFIG"]).write_text(
            f'[http]\ntimeout = 5\n[providers.codex.endpoints]\ntoken = "{auth.url}/oauth/token"\n'
        )

    def sign_in(self, left: int, age: int = 0) -> None:
        """``auth.json`` as Codex leaves it after signing in ``age`` s ago, its access token valid ``left`` s more."""
        clock = self.auth.now
        self.auth.now, self.auth.access_token_lifetime = (lambda: clock() - age), age + left
        try:
            answer = self.auth._issue(ALICE)
        finally:
            self.auth.now, self.auth.access_token_lifetime = clock, 3600  # what every refresh issues
        tokens = {key: answer[key] for key in ("id_token", "access_token", "refresh_token")}
        doc = {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {**tokens, "account_id": ALICE.account_id},
            "last_refresh": "2026-12-01T00:00:00Z",
        }
        self.path.write_text(json.dumps(doc, indent=2))

    async def start_broker(self) -> None:
        self.daemon = Daemon(load_settings(self.env), clock=SystemClock(), env=self.env)
        await self.daemon.start()

    async def run_codex(self) -> tuple[int, str]:
        backend = self.backend.url
        settings = {
            "chatgpt_base_url": f"{backend}/backend-api/",
            "model_provider": "loopback",
            "model_providers.loopback.name": "loopback",
            "model_providers.loopback.base_url": f"{backend}/v1",
            "model_providers.loopback.wire_api": "responses",
            "model_providers.loopback.requires_openai_auth": "true",
            "model_providers.loopback.request_max_retries": "0",
            "model_providers.loopback.stream_max_retries": "0",
        }
        flags = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        process = await asyncio.create_subprocess_exec(
            str(self.codex), "exec", *flags, "--skip-git-repo-check", "say hello",
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(self.root / "home"),
                "CODEX_HOME": str(self.home),
                "CODEX_REFRESH_TOKEN_URL_OVERRIDE": f"{self.auth.url}/oauth/token?by=codex",  # who sent it
                "OPENAI_BASE_URL": f"{backend}/v1",
            },
            cwd=str(self.root),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace")

    def ask_broker(self) -> dict[str, Any] | BrokerError:
        with Client(Path(self.env["BROKER_SOCKET"]), timeout=30) as client:
            try:
                return dict(client.request("GET", "/v1/token/codex?account=codex-cli"))
            except BrokerError as exc:
                return exc

    async def settled(self) -> dict[str, Any]:
        """Once broker has no refresh under way, serves what the file holds and owes it nothing: the file's tokens."""
        assert self.daemon is not None
        credentials, refresher = self.daemon.credentials, self.daemon.refresher

        def agreed() -> bool:
            live = credentials.get(KEY)
            tokens = json.loads(self.path.read_text())["tokens"]
            same = live is not None and live.refresh_token == tokens["refresh_token"]
            return same and not credentials.owes(KEY) and refresher.status(KEY).state != "refreshing"

        async def wait() -> None:
            while not agreed():
                changes = [credentials.wait_changed(), refresher.wait_status(KEY, lambda s: s.state != "refreshing")]
                waits = [asyncio.ensure_future(change) for change in changes]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()

        await asyncio.wait_for(wait(), SETTLE)
        return dict(json.loads(self.path.read_text())["tokens"])

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()


async def at(offset: float, action: Awaitable[Any]) -> Any:
    await asyncio.sleep(offset)  # the random moment of the race, not a wait for anything
    return await action


async def run_race(race: Race, scenario: str, rng: random.Random) -> dict[str, Any]:
    """Both sides at their random moments; what Codex and a client of broker got."""
    loop = asyncio.get_running_loop()
    if scenario == "codex_starts_mid_refresh":
        # Within broker's lead (never more than half the token's life), before Codex's own refresh moment.
        race.sign_in(left=500, age=700)
    else:
        race.sign_in(left=-10)
    offset = rng.uniform(-0.5, 0.5)
    if scenario == "codex_starts_mid_refresh":
        offset = rng.uniform(0.0, 0.6)  # broker redeems at its start; Codex comes during the request
    if scenario == "broker_starts_mid_refresh":
        offset = -rng.uniform(0.1, 0.8)  # Codex first: broker starts while Codex waits for its answer
    ready = asyncio.Event()

    async def broker() -> None:
        await race.start_broker()
        ready.set()

    async def ask() -> dict[str, Any] | BrokerError:
        return await loop.run_in_executor(None, race.ask_broker)

    async def client() -> dict[str, Any] | BrokerError:
        await ready.wait()
        return await at(rng.uniform(0.0, 0.5), ask())

    jobs = [at(max(0.0, -offset), broker()), at(max(0.0, offset), race.run_codex())]
    if scenario == "both_expired_client":
        jobs.append(client())
    results = await asyncio.gather(*jobs)
    return {"codex": results[1], "client": results[2] if len(results) > 2 else None}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_codex_and_broker_never_present_a_refresh_token_twice(
    scenario: str, short_tmp: Path, servers: tuple[SlowRotatingAuth, FakeCodexBackend], codex: Path
):
    auth, backend = servers
    rng = random.Random(f"{scenario}-11")
    for number in range(RACES):
        race = Race(short_tmp / f"race-{number}", auth, backend, codex)
        before = auth.by.copy()
        try:
            outcome = await run_race(race, scenario, rng)
            tokens = await race.settled()
            code, out = outcome["codex"]
            assert code == 0 and REPLY in out, out[-2000:]
            assert auth.reused() == [], f"race {number}: a refresh token was presented twice"
            assert auth.refresh_token_state(tokens["refresh_token"]) == "live"
            assert auth.valid_access_token(tokens["access_token"])
            served = await asyncio.get_running_loop().run_in_executor(None, race.ask_broker)
            assert isinstance(served, dict) and served["access_token"] == tokens["access_token"]
            redeemer = "broker" if scenario == "codex_starts_mid_refresh" else "codex"
            assert auth.by - before == Counter({redeemer: 1}), f"race {number}: one refresh, by {redeemer}"
            client = outcome["client"]
            if isinstance(client, dict):  # a client that asked while Codex refreshed got a live token
                assert auth.valid_access_token(client["access_token"])
            elif client is not None:
                assert client.code == "left_to_cli", client
        finally:
            await race.stop()
