"""Retry-After as RFC 9110 §10.2.3 defines it: delay-seconds or an HTTP-date."""

from __future__ import annotations

import pytest
from broker.flows.http import MAX_RETRY_AFTER, HttpResponse


def answer(**headers: str) -> HttpResponse:
    return HttpResponse(status=429, headers=headers, text="")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "86400"}, MAX_RETRY_AFTER),
        ({"Retry-After": "inf"}, MAX_RETRY_AFTER),
        ({"Retry-After": "nan"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:30:00 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"}, 120.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:30:00 GMT", "Date": "Wed, 21 Oct 2015 07:31:00 GMT"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:30:00 GMT"}, 0.0),  # no Date: the past, by the local clock
        ({"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}, MAX_RETRY_AFTER),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date_and_capped(headers: dict[str, str], seconds: float | None):
    assert answer(**headers).retry_after() == seconds
