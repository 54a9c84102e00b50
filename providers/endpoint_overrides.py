"""``[providers.NAME.endpoints]``: explicit URLs that beat those a built-in derives from its host.

A built-in provider derives its endpoints from one host (github.com, a GitLab instance);
tests, proxies and unusual deployments replace any of them by key, and a key the
provider does not have is refused with the keys it does have.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.config import Section


def read_overrides(section: Section, keys: Sequence[str]) -> dict[str, str]:
    """The URLs set under ``endpoints`` of a provider's table, by key."""
    table = section.section("endpoints")
    table.check_keys(keys)
    found: dict[str, str] = {}
    for key in keys:
        url = table.url(key, None)
        if url is not None:
            found[key] = url
    return found
