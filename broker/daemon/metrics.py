"""Counters the daemon exposes at ``GET /metrics`` in the Prometheus text format.

Only what costs next to nothing on the request path: refresh outcomes, counted by the
refresher; the number of credentials held; and per proxied request a few counter
increments and one bisect (``ProxyMetrics``, under 1 µs).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds until the upstream's answer begins: a model's first token can take a minute."""


class ProxyMetrics:
    """The auth proxy's requests by provider and status, the upstream's latency, and the bytes carried."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.cut_short: Counter[tuple[str, str]] = Counter()
        """(provider, ``client`` or ``upstream``) → answers that side broke off."""
        self.sent: Counter[str] = Counter()
        """Request body bytes sent upstream."""
        self.received: Counter[str] = Counter()
        """Answer bytes relayed to the client."""
        self._latency: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self._latency_sum: defaultdict[str, float] = defaultdict(float)

    def record(self, provider: str, status: int, *, sent: int = 0, received: int = 0) -> None:
        """One request that got an answer from the proxy (``provider`` "" when the path named none it knows)."""
        self.requests[(provider, status)] += 1
        if sent:
            self.sent[provider] += sent
        if received:
            self.received[provider] += received

    def upstream_answered(self, provider: str, seconds: float) -> None:
        self._latency[provider][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum[provider] += seconds

    def lines(self) -> Iterable[str]:
        yield from _counter(
            "broker_proxy_requests_total",
            "Requests through the auth proxy by provider and HTTP status (401: no or a wrong proxy key).",
            {f'provider="{_label(p)}",status="{s}"': n for (p, s), n in self.requests.items()},
        )
        yield from _counter(
            "broker_proxy_cut_short_total",
            "Answers broken off by the client (it hung up) or by the upstream.",
            {f'provider="{_label(p)}",by="{by}"': n for (p, by), n in self.cut_short.items()},
        )
        yield from _counter(
            "broker_proxy_request_bytes_total",
            "Request body bytes the proxy sent upstream.",
            {f'provider="{_label(p)}"': n for p, n in self.sent.items()},
        )
        yield from _counter(
            "broker_proxy_response_bytes_total",
            "Answer bytes the proxy relayed to its clients.",
            {f'provider="{_label(p)}"': n for p, n in self.received.items()},
        )
        yield "# HELP broker_proxy_upstream_seconds Seconds from sending a request upstream to the answer's headers."
        yield "# TYPE broker_proxy_upstream_seconds histogram"
        for provider, counts in sorted(self._latency.items()):
            label, total = _label(provider), 0
            for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), counts, strict=True):
                total += count
                yield f'broker_proxy_upstream_seconds_bucket{{provider="{label}",le="{bound}"}} {total}'
            yield f'broker_proxy_upstream_seconds_sum{{provider="{label}"}} {self._latency_sum[provider]:.6f}'
            yield f'broker_proxy_upstream_seconds_count{{provider="{label}"}} {total}'


class Metrics:
    def __init__(self) -> None:
        self.refreshes: Counter[tuple[str, str]] = Counter()
        """(provider, ``ok`` or the error code) → refresh attempts that ended so."""
        self.proxy = ProxyMetrics()

    def render(self, credentials: int) -> str:
        lines = [
            *_counter(
                "broker_refreshes_total",
                "Refresh attempts by provider and result (ok or an error code).",
                {f'provider="{_label(p)}",result="{r}"': n for (p, r), n in self.refreshes.items()},
            ),
            "# HELP broker_credentials Credentials held.",
            "# TYPE broker_credentials gauge",
            f"broker_credentials {credentials}",
            *self.proxy.lines(),
        ]
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, samples: dict[str, int]) -> Iterable[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} counter"
    for labels, value in sorted(samples.items()):
        yield f"{name}{{{labels}}} {value}"


def _label(value: str) -> str:
    """A label value as the text format writes it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
