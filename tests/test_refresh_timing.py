"""Refresh timing with an injected clock: the real daemon in-process, on its real socket.

The daemon object runs in the test's event loop so the test owns its clock; clients
still talk to it over the Unix socket from another thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.client import Client
from broker.core.config import load_settings
from broker.core.errors import LoginRequired
from broker.core.model import CredentialKey
from broker.daemon.main import Daemon
from tests.conftest import acme_config, isolated_env
from tests.fakes.clock import FakeClock
from tests.fakes.oauth_server import FakeOAuthServer

KEY: CredentialKey = ("acme", "alice@example.com")


@dataclass
class Harness:
    daemon: Daemon
    clock: FakeClock
    oauth: FakeOAuthServer
    socket: Path
    env: dict[str, str]
    clients: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(64))
    """Client threads of their own: the daemon's store calls use the loop's default pool."""

    async def get(self, path: str) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                return client.request("GET", path)

        return await asyncio.get_running_loop().run_in_executor(self.clients, call)

    async def login(self) -> None:
        def run() -> None:
            with Client(self.socket, timeout=30) as client:
                events = client.stream("POST", "/v1/login/acme", {})
                self.oauth.approve(next(events)["user_code"])
                assert next(events)["event"] == "done"

        await asyncio.to_thread(run)

    @property
    def credential(self):  # type: ignore[no-untyped-def]
        credential = self.daemon.credentials.get(KEY)
        assert credential is not None
        return credential


async def start_harness(root: Path, lifetime: int) -> tuple[Harness, FakeOAuthServer]:
    oauth = FakeOAuthServer(device_interval=0.05, access_token_lifetime=lifetime).start()
    env = isolated_env(root)
    Path(env["BROKER_CONFIG"]).write_text(acme_config(oauth))
    clock = FakeClock()
    daemon = Daemon(load_settings(env), clock=clock)
    await daemon.start()
    harness = Harness(daemon, clock, oauth, Path(env["BROKER_SOCKET"]), env)
    await harness.login()
    return harness, oauth


@pytest.fixture
async def hour(short_tmp: Path) -> AsyncIterator[Harness]:
    harness, oauth = await start_harness(short_tmp, 3600)
    yield harness
    await harness.daemon.stop()
    oauth.stop()


@pytest.fixture
async def five_minutes(short_tmp: Path) -> AsyncIterator[Harness]:
    harness, oauth = await start_harness(short_tmp, 300)
    yield harness
    await harness.daemon.stop()
    oauth.stop()


async def test_refresh_is_planned_a_tenth_of_the_lifetime_ahead(hour: Harness):
    credential = hour.credential
    assert credential.expires_at == pytest.approx(hour.clock.now() + 3600)
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    assert credential.expires_at - 360 - 30 <= planned <= credential.expires_at - 360


async def test_refresh_is_planned_at_least_the_margin_ahead(five_minutes: Harness):
    credential = five_minutes.credential
    planned = five_minutes.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    assert credential.expires_at - 60 - 6 <= planned <= credential.expires_at - 60


async def test_timer_refreshes_at_the_deadline_and_persists_before_serving(hour: Harness):
    before = hour.credential
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    hour.clock.advance_to(planned - 1)
    assert hour.oauth.grant_counts["refresh_token"] == 0
    hour.clock.advance_to(planned)
    status = await asyncio.wait_for(hour.daemon.refresher.wait_attempts(KEY, 1), 10)
    assert status.state == "ready"
    assert hour.oauth.grant_counts["refresh_token"] == 1
    after = hour.credential
    assert after.access_token != before.access_token
    assert not hour.oauth.valid_refresh_token(before.refresh_token or "")
    reloaded = {c.key: c for c in hour.daemon.store.load()}  # type: ignore[union-attr]
    assert reloaded[KEY].refresh_token == after.refresh_token
    served = await hour.get("/v1/token/acme")
    assert served["access_token"] == after.access_token


async def test_timer_plans_the_next_refresh_after_one(hour: Harness):
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    hour.clock.advance_to(planned)
    await asyncio.wait_for(hour.daemon.refresher.wait_attempts(KEY, 1), 10)
    await asyncio.wait_for(_next_plan_after(hour, planned), 10)
    again = hour.daemon.refresher.status(KEY).next_refresh_at
    assert again is not None and again > planned + 3000


async def _next_plan_after(harness: Harness, instant: float) -> None:
    while (harness.daemon.refresher.status(KEY).next_refresh_at or 0) <= instant:
        await asyncio.sleep(0)


async def test_invalid_grant_marks_login_required_and_still_serves_the_valid_token(hour: Harness):
    hour.oauth.revoke_all_refresh_tokens()
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    hour.clock.advance_to(planned)
    status = await asyncio.wait_for(hour.daemon.refresher.wait_attempts(KEY, 1), 10)
    assert status.state == "login_required"
    assert isinstance(status.last_error, LoginRequired)
    assert status.last_error.hint == "run: broker login acme"
    served = await hour.get("/v1/token/acme")
    assert served["access_token"] == hour.credential.access_token
    assert hour.oauth.grant_counts["refresh_token"] == 1, "no retry after a dead grant"

    hour.clock.advance_to(hour.credential.expires_at + 1)
    with pytest.raises(LoginRequired) as raised:
        await hour.get("/v1/token/acme")
    assert raised.value.hint == "run: broker login acme"
    assert hour.daemon.credentials.get(KEY) is not None, "a dead login is reported, never deleted"


async def test_transient_faults_back_off_then_recover_by_themselves(hour: Harness):
    hour.oauth.fail_next("/token", count=3, status=500)
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    hour.clock.advance_to(planned)
    failed = await asyncio.wait_for(hour.daemon.refresher.wait_attempts(KEY, 1), 10)
    assert failed.state in ("error", "refreshing", "ready")
    recovered = await asyncio.wait_for(hour.daemon.refresher.wait_attempts(KEY, 2), 10)
    assert recovered.state == "ready"
    assert hour.oauth.grant_counts["refresh_token"] == 4, "three faults, then one success"
    quick, backoff = hour.clock.jumped[-3:-1], hour.clock.jumped[-1]
    assert all(0 < wait <= 5 for wait in quick)
    assert 1.0 <= backoff <= 2.0


async def test_still_valid_token_is_served_while_the_upstream_fails(hour: Harness):
    hour.oauth.fail_next("/token", count=50, status=503)
    hour.clock.advance_to(hour.credential.expires_at - 30)
    served = await hour.get("/v1/token/acme")
    assert served["access_token"] == hour.credential.access_token
    assert 0 < served["expires_in"] <= 30


async def test_concurrent_requests_share_one_refresh(hour: Harness):
    old = hour.credential.access_token
    hour.clock.advance_to(hour.credential.expires_at - 10)
    answers = await asyncio.gather(*(hour.get("/v1/token/acme") for _ in range(40)))
    tokens = {answer["access_token"] for answer in answers}
    assert old not in tokens
    assert len(tokens) == 1
    assert hour.oauth.grant_counts["refresh_token"] == 1


async def test_a_min_ttl_longer_than_any_token_costs_one_refresh_not_one_per_request(five_minutes: Harness):
    first = five_minutes.credential
    assert (await five_minutes.get("/v1/token/acme?min_ttl=3600"))["access_token"] == first.access_token
    assert five_minutes.oauth.grant_counts["refresh_token"] == 0, "half of the 5-minute lifetime is left"

    five_minutes.clock.advance(200)
    answers = [await five_minutes.get("/v1/token/acme?min_ttl=3600") for _ in range(5)]
    assert five_minutes.oauth.grant_counts["refresh_token"] == 1
    assert {answer["access_token"] for answer in answers} == {five_minutes.credential.access_token}
    assert all(answer["expires_in"] > 150 for answer in answers)


async def test_a_login_an_on_demand_refresh_found_dead_is_not_tried_again_by_the_timer(hour: Harness):
    planned = hour.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    hour.oauth.revoke_all_refresh_tokens()
    hour.clock.advance(1900)
    served = await hour.get("/v1/token/acme?min_ttl=3590")  # 1700 s left, under half the lifetime: refresh first
    assert served["access_token"] == hour.credential.access_token, "the valid token is still served"
    assert hour.daemon.refresher.status(KEY).state == "login_required"
    timer = hour.daemon.refresher.timer(KEY)
    assert timer is not None and not timer.done()
    hour.clock.advance_to(planned)
    await asyncio.wait_for(asyncio.shield(timer), 10)  # the woken timer gives up on a dead login
    assert hour.oauth.grant_counts["refresh_token"] == 1, "a dead refresh token is sent once"
