"""A built-in provider's ``[providers.NAME.endpoints]`` table: its defaults, overridden key by key."""

from __future__ import annotations

from collections.abc import Mapping

from broker.config import Section


def endpoints_from(section: Section, defaults: Mapping[str, str]) -> dict[str, str]:
    """Every endpoint in ``defaults``, with the URLs the config gives instead; unknown keys are refused."""
    table = section.section("endpoints")
    table.check_keys(defaults)
    return {key: table.url(key, default) for key, default in defaults.items()}
