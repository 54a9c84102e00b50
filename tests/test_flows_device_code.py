"""RFC 8628 polling arithmetic, against the real authorization server, with no real waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from broker.flows import device_code
from broker.flows.device_code import DeviceAuthorization, DeviceClient
from broker.flows.errors import OAuthError
from broker.flows.http import HttpClient
from broker.flows.token import OAuthClient

from tests.fakes.oauth_server import FakeOAuthServer


class VirtualTime:
    """Records every wait the flow asks for and lets time pass instantly."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.t = 0.0
        self.waits: list[float] = []
        self.on_sleep = on_sleep

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.t += seconds
        self.on_sleep(len(self.waits))


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with aiohttp.ClientSession() as session:
        yield HttpClient(session)


def device(server: FakeOAuthServer) -> DeviceClient:
    return DeviceClient(
        device_authorization_endpoint=f"{server.url}/device_authorization",
        token_endpoint=f"{server.url}/token",
        client=OAuthClient("broker-cli"),
        scopes=("openid", "offline_access"),
    )


async def test_slow_down_adds_five_seconds_to_this_and_every_later_poll(http: HttpClient):
    with FakeOAuthServer(device_interval=1) as server:
        grant = await device_code.authorize(http, device(server))
        time = VirtualTime(lambda polls: server.approve(grant.user_code) if polls == 4 else None)
        tokens = await device_code.poll(http, device(server), grant, now=time.now, sleep=time.sleep)
    assert tokens.access_token
    # first poll is pending, each later one comes too fast: 1, then +5 per slow_down
    assert time.waits[:4] == [1, 1, 6, 11]
    assert server.grant_counts["urn:ietf:params:oauth:grant-type:device_code"] == len(time.waits)


async def test_verification_uri_complete_is_passed_to_the_ui(http: HttpClient):
    shown: list[DeviceAuthorization] = []

    async def on_verify(grant: DeviceAuthorization) -> None:
        shown.append(grant)
        server.approve(grant.user_code)

    with FakeOAuthServer(device_interval=1) as server:
        time = VirtualTime()
        await device_code.run(http, device(server), on_verify, now=time.now, sleep=time.sleep)
    (grant,) = shown
    assert grant.verification_uri_complete and grant.user_code in grant.verification_uri_complete
    assert grant.device_code not in repr(grant), "the device code is a secret"


async def test_the_wait_is_bounded_by_expires_in(http: HttpClient):
    with FakeOAuthServer(device_interval=5, device_code_lifetime=60) as server:
        time = VirtualTime()
        grant = await device_code.authorize(http, device(server))
        with pytest.raises(OAuthError) as raised:
            await device_code.poll(http, device(server), grant, now=time.now, sleep=time.sleep)
    assert raised.value.error == "expired_token"
    assert sum(time.waits) <= 60


async def test_transport_faults_while_polling_back_off_instead_of_failing(http: HttpClient):
    with FakeOAuthServer(device_interval=1) as server:
        grant = await device_code.authorize(http, device(server))
        server.fail_next("/token", count=2, status=503)
        time = VirtualTime(lambda polls: server.approve(grant.user_code) if polls == 3 else None)
        tokens = await device_code.poll(http, device(server), grant, now=time.now, sleep=time.sleep)
    assert tokens.access_token
    assert time.waits[1] > time.waits[0], "a 503 lengthens the wait"


async def test_access_denied_ends_the_flow(http: HttpClient):
    with FakeOAuthServer(device_interval=1) as server:
        grant = await device_code.authorize(http, device(server))
        time = VirtualTime(lambda polls: server.deny(grant.user_code) if polls == 1 else None)
        with pytest.raises(OAuthError) as raised:
            await device_code.poll(http, device(server), grant, now=time.now, sleep=time.sleep)
    assert raised.value.error == "access_denied"
