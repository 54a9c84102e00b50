"""Refresh timing for any token lifetime, end to end on the fake clock.

The real daemon runs in the test's event loop (so the test owns its clock) against an
OAuth server; clients ask over the Unix socket. hypothesis draws the lifetime the
server answers with (5 s to 30 days), when clients ask and how much validity they
demand; each example logs in afresh (a code grant: no clock sleeps in it) and then
plays four lifetimes, moving the clock only to the next client or the timer's plan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.client import Client
from broker.core.config import load_settings
from broker.core.model import CredentialKey
from broker.daemon.main import Daemon
from tests.conftest import acme_config, isolated_env
from tests.fakes.clock import FakeClock
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import authorize, browser_get

KEY: CredentialKey = ("acme", "alice@example.com")
DAY = 86400
LIFETIMES_PLAYED = 4
MOST_REFRESHES = 2 * LIFETIMES_PLAYED + 1
PLAN_TIMEOUT = 30.0


class World:
    """The daemon on a fake clock that never jumps by itself, its OAuth server, and client threads."""

    def __init__(self, root: Path) -> None:
        self.oauth = FakeOAuthServer(access_token_lifetime=3600).start()
        self.env = isolated_env(root)
        Path(self.env["BROKER_CONFIG"]).write_text(acme_config(self.oauth, flow="pkce"))
        self.clock = FakeClock(autojump_below=0.0)
        self.daemon = Daemon(load_settings(self.env), clock=self.clock)
        self.socket = Path(self.env["BROKER_SOCKET"])
        self.threads = ThreadPoolExecutor(4)

    async def call(self, method: str, path: str) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                return client.request(method, path)

        return await asyncio.get_running_loop().run_in_executor(self.threads, call)

    async def login(self) -> None:
        """A code-grant login over the socket, the test acting as the browser."""

        def run() -> None:
            with Client(self.socket, timeout=30) as client:
                events = client.stream("POST", "/v1/login/acme", {})
                status, _ = browser_get(authorize(next(events)["url"]))
                assert status == 200
                assert next(events)["event"] == "done"

        await asyncio.get_running_loop().run_in_executor(self.threads, run)

    async def next_plan(self, after: float | None) -> float:
        """The timer's plan, once it has made one other than ``after``."""
        status = await asyncio.wait_for(
            self.daemon.refresher.wait_status(KEY, lambda s: s.next_refresh_at not in (None, after)), PLAN_TIMEOUT
        )
        assert status.next_refresh_at is not None
        return status.next_refresh_at


@pytest.fixture
def world(short_tmp: Path) -> Iterator[tuple[asyncio.Runner, World]]:
    with asyncio.Runner() as runner:
        world = World(short_tmp)
        runner.run(world.daemon.start())
        try:
            yield runner, world
        finally:
            runner.run(world.daemon.stop())
            world.threads.shutdown()
            world.oauth.stop()


async def play(world: World, lifetime: int, clients: list[tuple[float, float]]) -> tuple[int, list[int]]:
    """Log in with tokens of ``lifetime``, play four lifetimes; the refreshes and the ``expires_in`` served."""
    world.oauth.set_access_token_lifetime(lifetime)
    await world.login()
    start, refreshed = world.clock.now(), world.oauth.grant_counts["refresh_token"]
    horizon = start + LIFETIMES_PLAYED * lifetime
    asks = sorted((start + share * LIFETIMES_PLAYED * lifetime, min_ttl) for share, min_ttl in clients)
    served: list[int] = []
    plan = await world.next_plan(None)
    while plan <= horizon and world.oauth.grant_counts["refresh_token"] - refreshed <= MOST_REFRESHES:
        if asks and asks[0][0] < plan:
            at, min_ttl = asks.pop(0)
            world.clock.advance_to(at)
            answer = await world.call("GET", f"/v1/token/acme?min_ttl={min_ttl:.0f}")
            served.append(answer["expires_in"])
            continue
        world.clock.advance_to(plan)
        plan = await world.next_plan(plan)
    return world.oauth.grant_counts["refresh_token"] - refreshed, served


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lifetime=st.integers(5, 30 * DAY),
    clients=st.lists(st.tuples(st.floats(0, 1), st.floats(0, DAY)), max_size=12),
)
@example(lifetime=15, clients=[(i / 12, 60.0) for i in range(12)])  # once refreshed 69 times in 18 s
@example(lifetime=5, clients=[])
@example(lifetime=30 * DAY, clients=[(0.5, DAY)])
def test_any_lifetime_costs_at_most_two_refreshes_per_lifetime_and_no_expired_token(
    world: tuple[asyncio.Runner, World], lifetime: int, clients: list[tuple[float, float]]
) -> None:
    runner, daemon = world
    refreshes, served = runner.run(play(daemon, lifetime, clients))
    assert refreshes >= LIFETIMES_PLAYED, "the timer keeps the login fresh: at least one refresh per lifetime"
    assert refreshes <= MOST_REFRESHES, f"{refreshes} refreshes in {LIFETIMES_PLAYED} lifetimes"
    assert all(left > 0 for left in served), f"an expired token was served: {served}"
