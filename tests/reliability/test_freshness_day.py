"""A simulated day of 30-minute tokens and 200 clients asking at random times.

The clock is injected: the test walks it through the day, letting each refresh the
timer starts finish (a healthy upstream answers in no time on the day's scale), and
sends every client's request over the real socket at its moment. The upstream keeps
each token's expiry in the same clock, so "expired" is judged by who issued it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from broker.daemon.api import DEFAULT_MIN_TTL
from tests.fakes.clock import FakeClock
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.reliability.conftest import Rig

DAY = 86400.0
LIFETIME = 1800.0
CLIENTS = 200
ASKS_PER_CLIENT = 5
MIN_TTLS = (None, 0.0, 30.0, 120.0, 170.0)
"""Each client's own ``min_ttl`` (None: the default); all below the 180 s the timer refreshes ahead."""
AUTOJUMP = 10.0
"""FakeClock's default: a timer this close to its deadline jumps there by itself."""


@dataclass(frozen=True)
class Ask:
    at: float
    client: int
    min_ttl: float | None

    @property
    def query(self) -> str:
        return "" if self.min_ttl is None else f"?min_ttl={self.min_ttl:g}"

    @property
    def needs(self) -> float:
        return DEFAULT_MIN_TTL if self.min_ttl is None else self.min_ttl


def schedule(start: float, rng: random.Random) -> list[Ask]:
    asks = []
    for client in range(CLIENTS):
        min_ttl = rng.choice(MIN_TTLS)
        asks += [Ask(start + rng.uniform(0, DAY), client, min_ttl) for _ in range(ASKS_PER_CLIENT)]
    return sorted(asks, key=lambda ask: ask.at)


async def catch_up(rig: Rig, instant: float) -> None:
    """Move the clock to ``instant``, finishing every refresh that falls due on the way."""
    while True:
        planned = await rig.planned()
        if planned > instant + AUTOJUMP:
            rig.clock.advance_to(instant)
            return
        attempts = rig.status.attempts
        rig.clock.advance_to(planned)
        assert (await rig.attempts(attempts + 1)).state == "ready"


async def test_no_client_gets_a_stale_token_or_waits_in_a_day_of_30_minute_tokens(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(lifetime=LIFETIME), FakeClock())
    start = rig.clock.now()
    asks = schedule(start, random.Random(7))
    for ask in asks:
        await catch_up(rig, ask.at)
        requests_before = rig.upstream.requests
        served = await rig.token(ask.query)
        now = rig.clock.now()
        assert rig.upstream.requests == requests_before, f"client {ask.client} waited on a refresh at {now - start}"
        issued = rig.upstream.access[served["access_token"]]
        assert issued.expires_at - now >= ask.needs, f"client {ask.client} got {issued.expires_at - now:.0f}s left"
        assert served["expires_at"] == int(issued.expires_at)
        assert served["expires_in"] >= ask.needs
    await catch_up(rig, start + DAY)

    refreshes = rig.upstream.counts["refreshed"]
    cycle_longest, cycle_shortest = LIFETIME - 180, LIFETIME - 198
    assert DAY // cycle_longest <= refreshes <= DAY // cycle_shortest + 1, "refreshed just ahead of expiry, no more"
    assert rig.upstream.requests == refreshes, "every request to the upstream was one refresh that worked"
    assert rig.upstream.counts["reused"] == rig.upstream.counts["unknown"] == 0
    assert len({ask.client for ask in asks}) == CLIENTS
