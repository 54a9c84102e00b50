"""Upstream faults during refresh: bounded retries, Retry-After, a still-valid token, recovery.

Each fault comes from the loopback ``FaultyUpstream``: HTTP 500, 429 with Retry-After,
a hang past the outbound timeout, a connection reset mid-answer, a 200 whose body is
not JSON, and a slow answer that trickles in. A hang and a reset leave the request
without an answer after it reached the upstream, which may have spent the refresh token:
those are never sent again by themselves (``uncertain``), only when a person asks. The
daemon runs in-process with a fake clock whose short sleeps pass at once (the quick
retries inside one refresh) while the backoff between refreshes waits for the test to
move time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.daemon.refresher import WAIT_LIMIT
from broker.daemon.refresher.attempt import QUICK_RETRIES
from tests.fakes.clock import FakeClock
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.reliability.conftest import WAIT, Rig
from tests.test_hints import RUN

TRANSIENT = ("500", "429", "invalid_json")
"""Answers that spend nothing: retried."""
UNANSWERED = ("hang", "reset")
"""A request the upstream got, with no answer back: the refresh token may be spent."""
PER_ATTEMPT = QUICK_RETRIES + 1
"""Requests one refresh makes at most before it gives up until the next one."""


def backoff_clock() -> FakeClock:
    """Quick retries (under a second) pass at once; the backoff between refreshes waits for the test."""
    return FakeClock(autojump_below=1.0)


async def fail_one_refresh(rig: Rig, kind: str) -> dict[str, Any]:
    """Let the timer's refresh meet ``kind`` on every try; the token served just before it."""
    before = await rig.token()
    rig.upstream.inject(kind, PER_ATTEMPT)
    rig.clock.advance_to(await rig.planned())
    failed = await rig.attempts(1)
    assert failed.last_error is not None
    if kind in UNANSWERED:
        assert (failed.state, failed.last_error.code) == ("uncertain", "refresh_uncertain")
    else:
        assert (failed.state, failed.last_error.code) == ("error", "upstream_unavailable")
    return before


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_a_failing_refresh_makes_a_bounded_number_of_requests(rig_factory: Any, kind: str):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=0.5), backoff_clock(), timeout=0.5)
    await fail_one_refresh(rig, kind)
    assert rig.upstream.counts[kind] == PER_ATTEMPT
    assert rig.upstream.requests == PER_ATTEMPT, "no request beyond the quick retries of one refresh"


@pytest.mark.parametrize("kind", UNANSWERED)
async def test_a_request_left_without_an_answer_is_not_sent_again_by_itself(rig_factory: Any, kind: str):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=0.5), backoff_clock(), timeout=0.5)
    await fail_one_refresh(rig, kind)
    assert rig.upstream.requests == 1, "no quick retry: the refresh token may be spent"
    expires_at = rig.credential.expires_at
    assert expires_at is not None
    rig.clock.advance_to(expires_at + 1)  # the timer's moments pass, and the token expires
    refused = await rig.error("GET", "/v1/token/acme")
    assert refused.code == "refresh_uncertain"
    check, *_ = (command.split() for command in RUN.findall(refused.hint))  # the hint's first command
    assert check == ["broker", "refresh", "acme", "--account", rig.credential.account], refused.hint
    assert rig.upstream.requests == 1, "neither the timer nor a client sent it again"
    rig.upstream.heal()
    checked = await rig.cli(*check[1:])
    assert checked.returncode == 0, checked.stderr
    assert rig.upstream.requests == 2 and (await rig.account())["state"] == "ready"
    assert rig.stored().refresh_token in rig.upstream.live


@pytest.mark.parametrize("kind", TRANSIENT + UNANSWERED)
async def test_the_still_valid_token_is_served_while_a_refresh_fails(rig_factory: Any, kind: str):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=0.5), backoff_clock(), timeout=0.5)
    before = await fail_one_refresh(rig, kind)
    requests = rig.upstream.requests
    served = await rig.token()
    assert served["access_token"] == before["access_token"]
    assert served["expires_in"] > 0
    assert rig.upstream.requests == requests, "serving the valid token did not ask the upstream again"


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_status_reports_the_fault(rig_factory: Any, kind: str):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=0.5), backoff_clock(), timeout=0.5)
    await fail_one_refresh(rig, kind)
    account = await rig.account()
    assert account["state"] == "error"
    assert account["last_error"]["code"] == "upstream_unavailable"
    assert rig.upstream.token_url in account["last_error"]["message"]
    shown = await rig.cli("status")
    assert shown.returncode == 1, "a failing refresh is a problem for status"
    assert "upstream_unavailable: " in shown.stdout
    assert "retried by itself" in shown.stdout


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_the_next_refresh_recovers_by_itself(rig_factory: Any, kind: str):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=0.5), backoff_clock(), timeout=0.5)
    before = await fail_one_refresh(rig, kind)
    rig.clock.advance_to(await rig.planned())
    recovered = await rig.attempts(2)
    assert recovered.state == "ready" and recovered.last_error is None
    assert rig.upstream.counts["refreshed"] == 1
    served = await rig.token()
    assert served["access_token"] != before["access_token"]
    assert served["access_token"] in rig.upstream.access
    assert rig.stored().refresh_token in rig.upstream.live, "the rotated refresh token was persisted"
    assert (await rig.account())["last_error"] is None


async def test_a_lasting_outage_backs_off_exponentially_up_to_the_cap(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(lifetime=86400), backoff_clock())
    rig.upstream.always("500")
    rig.clock.advance_to(await rig.planned())
    pauses = []
    for attempt in range(1, 12):
        await rig.attempts(attempt)
        failed_at = rig.clock.now()
        planned = await rig.planned()
        pauses.append(planned - failed_at)
        rig.clock.advance_to(planned)
    await rig.attempts(12)
    assert rig.upstream.requests == 12 * PER_ATTEMPT
    for failures, pause in enumerate(pauses, start=1):
        ceiling = min(300.0, 2.0 * 2 ** (failures - 1))
        assert ceiling / 2 <= pause <= ceiling, (failures, pauses)
    assert max(pauses) <= 300.0


async def test_an_expired_token_is_refused_during_an_outage_and_served_after_it(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(lifetime=600), backoff_clock())
    rig.upstream.always("500")
    expires_at = rig.credential.expires_at
    assert expires_at is not None
    while rig.clock.now() <= expires_at:
        rig.clock.advance_to(await rig.planned())
        await rig.attempts(rig.status.attempts + 1)
    refused = await rig.error("GET", "/v1/token/acme")
    assert refused.code == "upstream_unavailable"
    assert refused.hint and "retried by itself" in refused.hint
    rig.upstream.heal()
    attempts = rig.status.attempts
    rig.clock.advance_to(await rig.planned())
    assert (await rig.attempts(attempts + 1)).state == "ready"
    served = await rig.token()
    assert rig.upstream.access[served["access_token"]].expires_at > rig.clock.now()


async def test_a_short_retry_after_is_waited_exactly(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=3), FakeClock())
    rig.upstream.inject("429", 2)
    rig.clock.advance_to(await rig.planned())
    assert (await rig.attempts(1)).state == "ready"
    assert rig.clock.jumped[-2:] == [3.0, 3.0], "each retry waited the Retry-After, no less"
    assert (rig.upstream.counts["429"], rig.upstream.counts["refreshed"]) == (2, 1)


async def test_a_long_retry_after_holds_the_next_request_back(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(retry_after=120), backoff_clock())
    rig.upstream.inject("429")
    rig.clock.advance_to(await rig.planned())
    failed = await rig.attempts(1)
    failed_at = rig.clock.now()
    assert failed.state == "error"
    assert rig.upstream.requests == 1, "a Retry-After longer than a quick retry ends the attempt"
    assert await rig.planned() >= failed_at + 120, "the next refresh waits out the Retry-After"
    await rig.token("?min_ttl=86400")
    assert rig.upstream.requests == 1, "a client asking meanwhile does not reach the upstream either"


async def test_a_slow_answer_is_read_whole_and_its_rotated_token_kept(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(slow_seconds=0.6), FakeClock(), timeout=5.0)
    spent = rig.credential.refresh_token
    rig.upstream.inject("slow")
    rig.clock.advance_to(await rig.planned())
    assert (await rig.attempts(1)).state == "ready"
    assert (rig.upstream.counts["slow"], rig.upstream.counts["refreshed"], rig.upstream.requests) == (1, 1, 1)
    assert spent in rig.upstream.spent
    assert rig.stored().refresh_token in rig.upstream.live
    assert (await rig.token())["access_token"] == rig.credential.access_token


async def test_a_hang_ends_at_the_timeout_and_the_daemon_keeps_answering(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(), backoff_clock(), timeout=1.0)
    rig.upstream.always("hang")
    rig.clock.advance_to(await rig.planned())
    answers = await asyncio.gather(*(rig.call("GET", "/v1/health") for _ in range(10)))
    assert all(answer["status"] == "ok" for answer in answers), "the daemon answers while a refresh hangs"
    failed = await rig.attempts(1)
    assert failed.last_error is not None and "did not answer within 1 s" in failed.last_error.message
    assert rig.upstream.counts["hang"] == 1


async def test_clients_asking_during_an_outage_do_not_multiply_upstream_requests(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(lifetime=600), backoff_clock())
    rig.upstream.always("500")
    while rig.credential.remaining(rig.clock.now()) > 50:  # the timer fails on until under a minute is left
        rig.clock.advance_to(await rig.planned())
        await rig.attempts(rig.status.attempts + 1)
    assert rig.status.next_refresh_at is not None and rig.status.next_refresh_at > rig.clock.now()
    during_backoff = rig.upstream.requests
    for _ in range(10):  # ten `broker token` calls with the default min_ttl of 60 s
        served = await rig.token()
        assert served["access_token"] == rig.credential.access_token, "the still-valid token is served"
    assert rig.upstream.requests == during_backoff, "the backoff holds for clients too"

    expires_at = rig.credential.expires_at
    assert expires_at is not None and rig.status.next_refresh_at is not None
    rig.clock.advance_to(min(expires_at + 1, rig.status.next_refresh_at - 1))
    if rig.clock.now() > expires_at:  # the backoff outlasts the token: clients get the fault, not a refresh
        refused = await rig.error("GET", "/v1/token/acme")
        assert refused.code == "upstream_unavailable"
        assert rig.upstream.requests == during_backoff

    forced = await rig.error("POST", "/v1/refresh/acme")
    assert forced.code == "upstream_unavailable", "an explicit refresh still asks the upstream"
    assert rig.upstream.requests == during_backoff + PER_ATTEMPT


async def test_a_client_waits_for_a_stuck_refresh_at_most_the_wait_limit(rig_factory: Any):
    rig: Rig = await rig_factory(FaultyUpstream(), FakeClock(), timeout=30.0)
    before = await rig.token()
    rig.upstream.hold()
    rig.clock.advance(1900)  # 1700 s of the 3600 s token left, under half: a client asking 3599.5 s starts a refresh
    asking = asyncio.ensure_future(rig.token("?min_ttl=3599.5"))
    await asyncio.to_thread(rig.upstream.wait_held, 1)
    assert not asking.done(), "the client waits for the refresh it started"
    rig.clock.advance(WAIT_LIMIT)
    served = await asyncio.wait_for(asking, WAIT)
    assert served["access_token"] == before["access_token"], "after the limit: the still-valid token"
    rig.upstream.release()
    assert (await rig.attempts(1)).state == "ready", "the refresh went on without its client"
    assert (await rig.token())["access_token"] != before["access_token"]
