"""Maps provider names to providers: the built-ins, configured or not, plus config's own.

A built-in (``copilot``, ``codex``, ...) reads its optional ``[providers.NAME]`` table
for overrides; any other ``[providers.NAME]`` table needs a ``type`` that picks its
factory (``oauth`` for any OAuth 2.0 server).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping

from broker.config import Section
from broker.errors import UnknownProvider
from providers.base import Provider
from providers.custom import CustomOAuthProvider

ProviderFactory = Callable[[str, Section], Provider]

BUILTINS: Mapping[str, ProviderFactory] = {}
"""Providers broker knows without any config, by name."""

CONFIG_TYPES: Mapping[str, ProviderFactory] = {
    "oauth": CustomOAuthProvider.from_config,
}
"""Factories for ``[providers.NAME] type = ...`` tables."""


class Registry:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._providers, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UnknownProvider(
                f"no provider named {name!r}",
                f"{hint}run: broker providers (or add [providers.{name}] to the config)",
            ) from None

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers.values())

    def __contains__(self, name: object) -> bool:
        return name in self._providers


def build_registry(providers: Section) -> Registry:
    """Every built-in (with its overrides), then one provider per other ``[providers.NAME]``."""
    built: dict[str, Provider] = {name: factory(name, providers.section(name)) for name, factory in BUILTINS.items()}
    for name, section in providers.sections().items():
        if name in BUILTINS:
            continue
        kind = section.choice("type", tuple(CONFIG_TYPES))
        built[name] = CONFIG_TYPES[kind](name, section)
    return Registry(built)
