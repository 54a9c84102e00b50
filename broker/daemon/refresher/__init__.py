"""Keeps every credential fresh ahead of its expiry, one refresh at a time.

- ``timing``: when a token is refreshed, as pure functions of the clock's readings.
- ``scheduler``: a timer per credential that sleeps until then.
- ``single_flight``: concurrent callers share the one refresh in flight, so a rotating
  refresh token is redeemed exactly once.
- ``attempt``: one refresh, with quick retries; a followed CLI file's newer tokens are
  used instead (``broker.followed.adoption``), and its refresh token is never redeemed
  while its CLI may redeem it too; a dead grant (``invalid_grant``) ends
  retries and marks the credential ``login_required``, and a still-valid token keeps
  being served meanwhile.
- ``recovery``: a refresh a crash cut short is replayed from its journal at start, an
  unknown outcome is not retried by itself (``uncertain``), owed writes are retried.
- ``status``: what ``broker status`` shows of each credential's upkeep.
- ``service``: the ``Refresher`` the daemon's API, logins and timers call.
"""

from broker.daemon.refresher.service import WAIT_LIMIT, Refresher
from broker.daemon.refresher.status import Status

__all__ = ["WAIT_LIMIT", "Refresher", "Status"]
