"""``[providers.NAME.endpoints]``: every endpoint of a built-in is overridable by key.

Providers with fixed defaults take ``endpoints_from``; providers that derive their
endpoints from a host (github.com or an enterprise host, a GitLab instance) take only
the explicit ``overrides`` and derive the rest at login. A key the provider does not
have is refused, naming the keys it does have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from broker.core.config import Section


def overrides(section: Section, keys: Sequence[str]) -> dict[str, str]:
    """The URLs set under ``endpoints`` of a provider's table, by key."""
    table = section.section("endpoints")
    table.check_keys(keys)
    return {key: url for key in keys if (url := table.url(key, None)) is not None}


def endpoints_from(section: Section, defaults: Mapping[str, str]) -> dict[str, str]:
    """Every endpoint in ``defaults``, with the URLs the config gives instead."""
    return {**defaults, **overrides(section, list(defaults))}
