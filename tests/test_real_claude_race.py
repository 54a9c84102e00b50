"""Broker and the real Claude Code share ``~/.claude/.credentials.json`` and race to refresh it.

Claude Code 2.1.332's native binary honours ``HTTPS_PROXY`` and ``NODE_EXTRA_CA_CERTS``:
through a test CA and a loopback HTTPS proxy (tests/fakes/tls_intercept) its refresh
reaches the strict Anthropic fake at ``platform.claude.com/v1/oauth/token`` and its
profile check ``api.anthropic.com/api/oauth/profile``. The fake rotates refresh tokens,
counts any presented twice and then revokes the whole login. Broker's clock runs an hour behind the wall clock Claude
Code reads, so each round's login is expired for Claude Code while broker waits until
the test moves its clock, at a random offset, in one of four scenarios:

- ``together``: broker's refresh falls due while ``claude -p`` starts;
- ``asked``: the same, with a client asking broker for a token at that moment;
- ``broker_first``: Claude Code starts while broker's refresh is in flight;
- ``restart``: broker starts while Claude Code's refresh is in flight.

Result: 0 refresh tokens presented twice, and after every round the file and broker hold
a token the server accepts.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from broker.daemon.main import Daemon
from tests.fakes.anthropic_auth import AnthropicTokenServer
from tests.fakes.clock import FakeClock
from tests.fakes.tls_intercept import InterceptingProxy, TestCA
from tests.peers import npm_program
from tests.test_followed_claude import KEY, Claude, start

pytestmark = pytest.mark.slow

ROUNDS_PER_SCENARIO = 8
BEHIND = 3600.0
"""How far broker's clock runs behind the wall clock Claude Code reads."""
LATEST_OFFSET = 1.5
"""The random offset's range, in seconds: ``claude -p`` takes about 0.5 s to reach its refresh."""
IN_FLIGHT = 1.0
"""How long the server holds the answer of the refresh the other side races."""
HOSTS = ("platform.claude.com", "api.anthropic.com", "claude.ai")


@pytest.fixture
async def claude(short_tmp: Path) -> AsyncIterator[Claude]:
    harness, server = await start(short_tmp, clock=FakeClock(time.time() - BEHIND))
    yield harness
    await harness.daemon.stop()
    server.stop()


def run_claude(claude: Claude, proxy: InterceptingProxy) -> subprocess.CompletedProcess[str]:
    home = claude.path.parent.parent
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "CLAUDE_CONFIG_DIR": str(claude.path.parent), **proxy.env()}
    return subprocess.run(
        [str(npm_program("claude")), "-p", "hi"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def server_of(claude: Claude) -> AnthropicTokenServer:
    assert isinstance(claude.server, AnthropicTokenServer)
    return claude.server


def write_expired(claude: Claude) -> None:
    """A login expired a minute ago for Claude Code, with most of an hour left on broker's clock."""
    claude.write(claude.doc(*claude.server.issue(), time.time() - claude.clock.now() - 60))


async def offset() -> None:
    await asyncio.sleep(random.uniform(0, LATEST_OFFSET))  # the race's random offset, not a synchronisation


async def broker_refresh_due(claude: Claude) -> None:
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    if planned is not None:  # None: Claude Code's write came first and broker planned none yet
        claude.clock.advance_to(planned)


async def in_flight(claude: Claude, path: str) -> None:
    """Hold ``path``'s next answer and return once that refresh has been redeemed upstream."""
    server = server_of(claude)
    server.answering.clear()
    server.slow = {path: IN_FLIGHT}
    assert await asyncio.to_thread(server.answering.wait, 30), f"no refresh reached {path}"


async def together(claude: Claude, proxy: InterceptingProxy) -> subprocess.CompletedProcess[str]:
    async def broker() -> None:
        await offset()
        await broker_refresh_due(claude)

    done, _ = await asyncio.gather(asyncio.to_thread(run_claude, claude, proxy), broker())
    return done


async def asked(claude: Claude, proxy: InterceptingProxy) -> subprocess.CompletedProcess[str]:
    async def broker() -> None:
        await offset()
        await broker_refresh_due(claude)
        await claude.token()

    done, _ = await asyncio.gather(asyncio.to_thread(run_claude, claude, proxy), broker())
    return done


async def broker_first(claude: Claude, proxy: InterceptingProxy) -> subprocess.CompletedProcess[str]:
    await broker_refresh_due(claude)
    await in_flight(claude, "/token")
    await offset()
    return await asyncio.to_thread(run_claude, claude, proxy)


async def restart(claude: Claude, proxy: InterceptingProxy) -> subprocess.CompletedProcess[str]:
    daemon = claude.daemon
    await daemon.stop()
    claude.write(claude.doc(*claude.server.issue(), -60))  # expired on both clocks

    async def broker() -> None:
        await in_flight(claude, "/v1/oauth/token")
        await offset()
        claude.daemon = Daemon(daemon.settings, clock=claude.clock, env=daemon.env)
        await claude.daemon.start()

    done, _ = await asyncio.gather(asyncio.to_thread(run_claude, claude, proxy), broker())
    return done


SCENARIOS: dict[str, Callable[[Claude, InterceptingProxy], Awaitable[subprocess.CompletedProcess[str]]]] = {
    "together": together,
    "asked": asked,
    "broker_first": broker_first,
    "restart": restart,
}


async def settled(claude: Claude) -> tuple[str, str]:
    """(file's refresh token, served access token) once both agree and the server holds that refresh token live.

    Broker may still be refreshing (its clock was moved to a refresh): each write-back is a change to wait on.
    """
    while True:
        tokens = json.loads(claude.path.read_text())["claudeAiOauth"]
        served = (await claude.token())["access_token"]
        if served == tokens["accessToken"] and tokens["refreshToken"] in claude.server.live:
            return str(tokens["refreshToken"]), served
        try:
            await claude.changed()
        except TimeoutError:
            return str(tokens["refreshToken"]), served


async def test_broker_and_claude_code_never_spend_a_refresh_token_twice(claude: Claude):
    server = server_of(claude)
    server.revoke_on_reuse = True
    rounds = [name for name in SCENARIOS for _ in range(ROUNDS_PER_SCENARIO)]
    random.shuffle(rounds)
    with InterceptingProxy(TestCA(claude.path.parent.parent), dict.fromkeys(HOSTS, server.url)) as proxy:
        for name in rounds:
            server.slow = {}
            claude.clock.set_back(min(claude.clock.now(), time.time() - BEHIND))  # the last round moved it on
            write_expired(claude)
            await claude.changed()
            done = await SCENARIOS[name](claude, proxy)
            assert server.counts["reused"] == 0, f"{name}: a refresh token was presented twice: {done.stderr}"
            refresh, served = await settled(claude)
            assert refresh in server.live, f"{name}: the file ends on a refresh token the server refuses"
            assert served in server.access, f"{name}: broker serves a token the server never issued"
            assert served == json.loads(claude.path.read_text())["claudeAiOauth"]["accessToken"], name
    assert "platform.claude.com" in proxy.connects, "Claude Code's refresh went through the proxy"
    by_claude = sum(1 for path in server.paths if path == "POST /v1/oauth/token")
    assert 0 < by_claude < server.counts["refreshed"], "both Claude Code and broker redeemed in these races"
    print(f"{len(rounds)} races: {server.counts['refreshed']} refreshes, {by_claude} by Claude Code, 0 reused")
