"""Counters the daemon exposes at ``GET /metrics`` in the Prometheus text format.

Only what costs nothing on the request path: refresh outcomes, counted by the
refresher, and the number of credentials held.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.refreshes: Counter[tuple[str, str]] = Counter()
        """(provider, ``ok`` or the error code) → refresh attempts that ended so."""

    def render(self, credentials: int) -> str:
        lines = [
            "# HELP broker_refreshes_total Refresh attempts by provider and result (ok or an error code).",
            "# TYPE broker_refreshes_total counter",
            *(
                f'broker_refreshes_total{{provider="{provider}",result="{result}"}} {n}'
                for (provider, result), n in sorted(self.refreshes.items())
            ),
            "# HELP broker_credentials Credentials held.",
            "# TYPE broker_credentials gauge",
            f"broker_credentials {credentials}",
        ]
        return "\n".join(lines) + "\n"
