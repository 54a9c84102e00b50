"""Counters the daemon exposes at ``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.refreshes: Counter[tuple[str, str]] = Counter()

    def render(self, credentials: int) -> str:
        lines = [
            "# HELP broker_requests_total Socket API requests by route and status.",
            "# TYPE broker_requests_total counter",
            *(
                f'broker_requests_total{{route="{route}",status="{status}"}} {n}'
                for (route, status), n in sorted(self.requests.items())
            ),
            "# HELP broker_refreshes_total Upstream refreshes by provider and result.",
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
