"""The refresh timing policy for any lifetime, as pure functions: no event loop, no daemon.

A small simulation plays the upstream (it answers every refresh with a token of the
drawn lifetime), the timer and clients with any ``min_ttl``; hypothesis draws the
lifetimes (5 s to 30 days), the margin, a followed CLI's lead, the jitter and the clients.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import example, given
from hypothesis import strategies as st

from broker.core.model import Credential
from broker.daemon.refresher.timing import (
    BACKOFF_CAP,
    MIN_INTERVAL,
    backoff_delay,
    reachable_ttl,
    refresh_lead,
    retry_due,
    timer_due,
)

DAY = 86400.0
LIFETIMES = st.floats(min_value=5.0, max_value=30 * DAY, allow_nan=False)
MARGINS = st.sampled_from([0.0, 60.0, 300.0, 3600.0])
DRAWS = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
HORIZON_LIFETIMES = 6
EPSILON = 1e-6
"""Seconds: what float arithmetic on epoch instants may shave off an exact half."""


def token(issued_at: float, lifetime: float, *, lead: float | None = None) -> Credential:
    return Credential("acme", "alice", "at", "rt", expires_at=issued_at + lifetime, issued_at=issued_at, lead=lead)


@dataclass
class Run:
    """One upstream that always answers ``lifetime``, one timer, and clients asking at given instants."""

    lifetime: float
    margin: float
    cli_lead: float | None
    draws: list[float]
    current: Credential = field(init=False)
    now: float = 0.0
    refreshes: list[tuple[float, Credential]] = field(default_factory=list)
    served: list[tuple[float, Credential]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.current = token(0.0, self.lifetime, lead=self.cli_lead)

    def refresh(self) -> None:
        self.refreshes.append((self.now, self.current))
        self.current = token(self.now, self.lifetime, lead=self.cli_lead)

    def client(self, min_ttl: float) -> None:
        """What ``Refresher.fresh`` decides: serve, or refresh first."""
        if self.current.remaining(self.now) < reachable_ttl(self.current, min_ttl):
            self.refresh()
        self.served.append((self.now, self.current))

    def play(self, clients: list[tuple[float, float]]) -> None:
        """Until the horizon: the timer refreshes when due, clients ask in between (and may refresh first)."""
        horizon = HORIZON_LIFETIMES * self.lifetime
        queue = sorted((share * horizon, min_ttl) for share, min_ttl in clients)
        for step in itertools.count():
            planned = self.current
            due = timer_due(planned, self.margin, self.draws[step % len(self.draws)])
            assert due > self.now, "a token is never due the moment it arrives"
            while queue and queue[0][0] < due and self.current is planned:
                self.now, min_ttl = queue.pop(0)
                self.client(min_ttl)
            if self.current is not planned:
                continue  # a client's refresh replaced the token: the timer plans again
            if due > horizon:
                return
            self.now = due
            self.refresh()


CLIENTS = st.lists(st.tuples(st.floats(0, 1), st.floats(0, DAY)), max_size=40)


@given(LIFETIMES, MARGINS, st.none() | st.floats(0, 2 * DAY), st.lists(DRAWS, min_size=1, max_size=8), CLIENTS)
@example(15.0, 60.0, None, [0.0], [(i / 40, 60.0) for i in range(40)])  # the 15 s token once refreshed 4 times a second
def test_refreshes_per_lifetime_stay_bounded_and_no_token_is_served_expired(
    lifetime: float, margin: float, cli_lead: float | None, draws: list[float], clients: list[tuple[float, float]]
) -> None:
    run = Run(lifetime, margin, cli_lead, draws)
    run.play(clients)
    assert len(run.refreshes) <= 2 * HORIZON_LIFETIMES + 1, "at most two refreshes per lifetime, timer or client"
    for at, spent in run.refreshes:
        assert spent.issued_at is not None and spent.expires_at is not None
        half = (spent.expires_at - spent.issued_at) / 2
        assert at - spent.issued_at >= half - EPSILON, "none before half a lifetime"
    for at, served in run.served:
        assert served.remaining(at) > 0, "no token is served expired"


@given(LIFETIMES, MARGINS, st.none() | st.floats(0, 2 * DAY), DRAWS)
def test_the_timer_refreshes_in_the_second_half_of_a_tokens_life(
    lifetime: float, margin: float, cli_lead: float | None, draw: float
) -> None:
    credential = token(1_800_000_000.0, lifetime, lead=cli_lead)
    assert credential.issued_at is not None and credential.expires_at is not None
    life = credential.expires_at - credential.issued_at  # as the clock's float arithmetic has it
    lead = refresh_lead(credential, margin)
    assert min(margin, life / 2) <= lead <= life / 2
    due = timer_due(credential, margin, draw)
    assert credential.issued_at + life / 2 - EPSILON <= due < credential.expires_at


@given(st.floats(0, 2 * MIN_INTERVAL), DRAWS)
def test_tokens_shorter_than_two_seconds_are_refreshed_at_most_once_a_second(lifetime: float, draw: float) -> None:
    credential = token(1_800_000_000.0, lifetime)
    assert credential.issued_at is not None
    assert timer_due(credential, 60.0, draw) >= credential.issued_at + MIN_INTERVAL


def test_a_token_of_unknown_age_waits_at_least_the_minimum_after_broker_obtained_it() -> None:
    credential = Credential("acme", "alice", "at", "rt", expires_at=1000.0)
    assert timer_due(credential, 60.0, 0.0) == 940.0
    assert timer_due(credential, 60.0, 0.0, obtained_at=999.5) == 999.5 + MIN_INTERVAL


def test_an_hour_token_keeps_the_documented_lead_of_six_minutes_plus_jitter() -> None:
    credential = token(0.0, 3600.0)
    assert refresh_lead(credential, 60.0) == 360.0
    assert timer_due(credential, 60.0, 0.0) == 3240.0
    assert timer_due(credential, 60.0, 0.999) > 3240.0 - 30.0


@given(st.floats(5.0, 30 * DAY), st.floats(0, DAY))
def test_min_ttl_is_honoured_up_to_half_a_lifetime(lifetime: float, min_ttl: float) -> None:
    assert reachable_ttl(token(0.0, lifetime), min_ttl) == min(min_ttl, lifetime / 2)


@given(st.integers(1, 60), DRAWS)
def test_backoff_grows_exponentially_and_stays_capped(failures: int, draw: float) -> None:
    ceiling = min(BACKOFF_CAP, 2.0 * 2 ** (failures - 1))
    assert ceiling / 2 <= backoff_delay(failures, draw) <= ceiling


@given(st.integers(1, 10), DRAWS, st.floats(0, 3600))
def test_a_retry_after_is_never_cut_short(failures: int, draw: float, retry_after: float) -> None:
    assert retry_due(1000.0, failures, draw, 1000.0 + retry_after) >= 1000.0 + retry_after
