"""When a token is refreshed: the timing policy, as pure functions of the clock's readings.

- The timer refreshes ``lead`` seconds before expiry: the largest of the margin (60 s),
  10 % of the token's lifetime and a followed CLI's own lead, but never more than half
  the lifetime. A token that lives less than the margin is refreshed halfway through
  its life, not the moment it arrives.
- Nobody, timer or client, makes broker refresh a token before half its lifetime has
  passed: a client's ``min_ttl`` counts up to half a lifetime. So a server that keeps
  answering with short tokens is asked at most twice per lifetime, and the timer never
  asks it more than once every ``MIN_INTERVAL`` seconds, however short the tokens.
- Jitter lengthens the lead by up to 10 % of it (at most 30 s), within the half-lifetime
  bound, so credentials obtained together do not refresh in lockstep.
- After a fault: exponential backoff with jitter in its upper half, capped at 5 minutes,
  and never before the upstream's Retry-After.

Randomness comes in as ``draw``, a number in [0, 1), so the policy is checked with any value.
"""

from __future__ import annotations

from broker.core.model import Credential

LIFETIME_SHARE = 0.10
JITTER_SHARE = 0.10
MAX_JITTER = 30.0
MIN_INTERVAL = 1.0
"""The timer waits at least this long after a token was obtained, even for tokens that live less."""
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0


def lifetime(credential: Credential) -> float | None:
    """Seconds from issue to expiry, when both are known."""
    if credential.expires_at is None or credential.issued_at is None:
        return None
    return max(0.0, credential.expires_at - credential.issued_at)


def refresh_lead(credential: Credential, margin: float) -> float:
    """Seconds before expiry at which the timer refreshes (jitter excluded)."""
    life = lifetime(credential)
    lead = max(margin, LIFETIME_SHARE * (life or 0.0), credential.lead or 0.0)
    return lead if life is None else min(lead, life / 2)


def timer_due(credential: Credential, margin: float, draw: float, obtained_at: float | None = None) -> float:
    """The instant the timer refreshes ``credential`` (its ``expires_at`` must be set).

    ``obtained_at`` stands in for an unknown ``issued_at``: when broker last refreshed it.
    """
    assert credential.expires_at is not None
    lead = refresh_lead(credential, margin)
    jittered = lead + draw * min(MAX_JITTER, JITTER_SHARE * lead)
    life = lifetime(credential)
    if life is not None:
        jittered = min(jittered, life / 2)
    due = credential.expires_at - jittered
    obtained = credential.issued_at if credential.issued_at is not None else obtained_at
    return due if obtained is None else max(due, obtained + MIN_INTERVAL)


def reachable_ttl(credential: Credential, min_ttl: float) -> float:
    """The validity a client's ``min_ttl`` may demand before broker refreshes: at most half a lifetime.

    A client asking more than that (an hour of a 30-minute token, or 60 s of a 61-second
    one) would otherwise cost a refresh on nearly every request.
    """
    life = lifetime(credential)
    return min_ttl if life is None else min(min_ttl, life / 2)


def backoff_delay(failures: int, draw: float) -> float:
    """Seconds to wait after ``failures`` faults in a row: exponential, jittered in its upper half."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + draw * ceiling / 2


def retry_due(now: float, failures: int, draw: float, not_before: float | None = None) -> float:
    """The instant the timer tries again after a fault, honouring the upstream's Retry-After."""
    return max(now + backoff_delay(failures, draw), not_before or 0.0)
